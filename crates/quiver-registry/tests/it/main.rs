//! Integration tests of the registry, in one binary.

mod common;
mod fuzz;
mod golden;
mod readme;
mod versions;
