//! See the crate docs' Layout section.
