//! Operational safeguards around the detection core: input validation now; circuit breaker and
//! fallback, rate limiting and the memory budget later.

pub mod ratelimit;
pub mod validate;
