//! Any bytes as the JSON body of a read (first byte even) or a push (odd), sent to a
//! served repository: a 2xx or a JSON 4xx, never a 5xx, and the server goes on serving
//! (`quiver_server::fuzz::Harness`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quiver_server::fuzz::Harness;

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("quiver-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Harness::new(&dir).expect("the served repository")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let path = if first % 2 == 0 { "/get-online-features" } else { "/push" };
    harness().check_json(path, body);
});
