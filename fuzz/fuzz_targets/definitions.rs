//! Any bytes as a definitions file: resolved, or rejected with errors naming the file;
//! never a panic or a stack overflow (`quiver_registry::fuzz::check_definitions`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        quiver_registry::fuzz::check_definitions(text);
    }
});
