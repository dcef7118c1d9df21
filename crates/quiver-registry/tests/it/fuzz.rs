//! The definitions fuzz target (`quiver_registry::fuzz::check_definitions`) run for a
//! bounded number of cases in CI: random text, deep nesting, huge values, and random
//! edits of every golden case's definitions. The unbounded run is
//! `cargo +nightly fuzz run definitions` in `fuzz/` (see its README).

use std::path::Path;

use proptest::prelude::*;
use quiver_registry::fuzz::check_definitions;

/// The definition files of the golden cases: valid and nearly valid seeds.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut out = Vec::new();
    for case in std::fs::read_dir(dir).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&case).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "quiver.yaml" {
                out.push(std::fs::read_to_string(&f).unwrap());
            }
        }
    }
    out.sort();
    assert!(out.len() >= 30, "only {} seed files", out.len());
    out
}

/// Words an edit may insert: keys, types, names, odd scalars.
const WORDS: &[&str] = &[
    "entities:",
    "sources:",
    "feature_views:",
    "features:",
    "on_demand_feature_views:",
    "feature_services:",
    "request_sources:",
    "name:",
    "dtype:",
    "ttl:",
    "expr:",
    "join_keys:",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ":",
    ",",
    "\n",
    "  ",
    "\t",
    "#",
    "&a",
    "*a",
    "!!binary",
    "---",
    "...",
    "'",
    "\"",
    "null",
    "~",
    "true",
    "1e309",
    "-0",
    "9223372036854775808",
    "0x10",
    "list<list<int64>>",
    "float32",
    "timestamp",
    "99999999999d",
    "-1h",
    "1.5h",
    "driver_id",
    "rate",
    "trips",
    "ts",
    "stats",
    "driver",
    "view:*",
    "a:b:c",
    "rate / 0",
    "sqrt(-1)",
    "\u{feff}",
    "\u{0}",
    "é",
    "🦀",
    "allow_non_finite: true",
    "<<: *a",
];

/// One edit: (kind, position fraction, length, word).
fn edit(text: &str, kind: u8, at: f64, len: usize, word: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let i = ((chars.len() as f64) * at) as usize;
    let j = (i + len).min(chars.len());
    let mut out: String = chars[..i].iter().collect();
    match kind % 4 {
        0 => {}                  // delete i..j
        1 => out.push_str(word), // replace i..j by a word
        2 => {
            // duplicate i..j
            out.extend(&chars[i..j]);
            out.extend(&chars[i..j]);
        }
        _ => {
            // insert a word
            out.push_str(word);
            out.extend(&chars[i..j]);
        }
    }
    out.extend(&chars[j..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_text_is_resolved_or_rejected_with_named_errors(text in "\\PC{0,400}") {
        check_definitions(&text);
    }

    #[test]
    fn edited_golden_definitions_are_resolved_or_rejected_with_named_errors(
        seed in 0usize..1000,
        edits in prop::collection::vec((any::<u8>(), 0.0f64..1.0, 0usize..40, 0usize..WORDS.len()), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed % seeds.len()].clone();
        for (kind, at, len, w) in edits {
            text = edit(&text, kind, at, len, WORDS[w]);
        }
        check_definitions(&text);
    }
}

#[test]
fn deep_nesting_and_huge_values_are_rejected_not_a_stack_overflow() {
    for depth in [64usize, 1_000, 20_000] {
        check_definitions(&format!(
            "entities: {}{}",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
        check_definitions(&format!("entities: {}", "- ".repeat(depth)));
        check_definitions(&format!(
            "entities:\n{}x: 1",
            "  a:\n".repeat(depth.min(2_000))
        ));
    }
    let long = format!(
        "on_demand_feature_views:\n  - name: o\n    sources: [request: r]\n    features:\n      - {{ name: f, dtype: int64, expr: \"{}\" }}\n",
        vec!["1"; 50_000].join(" + ")
    );
    check_definitions(&long);
    check_definitions(&format!(
        "entities: [{{ name: {}, join_keys: [k] }}]",
        "e".repeat(1 << 20)
    ));
}
