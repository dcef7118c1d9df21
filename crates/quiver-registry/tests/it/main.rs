//! Integration tests of the registry, in one binary.

mod golden;
