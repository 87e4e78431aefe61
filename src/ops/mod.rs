//! Operational safeguards around the detection core: input validation, the per-sensor
//! circuit breaker and its warm fallback; rate limiting and the memory budget later.

pub mod breaker;
pub mod fallback;
pub mod heap;
pub mod malloc;
pub mod memory;
pub mod ratelimit;
pub mod validate;
