//! YAML parsing with positions: errors and objects carry their 1-based line and column.

use std::borrow::Cow;

use quiver_core::names::suggest;
use serde::de::DeserializeOwned;
use serde_saphyr::{DuplicateKeyPolicy, Error, Location, MessageFormatter, UserMessageFormatter};

/// A YAML text that could not be parsed into the expected shape.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// What is wrong, without the position.
    pub message: String,
}

impl YamlError {
    /// `file:line:column: message`, with as much of the position as is known.
    pub fn in_file(&self, file: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: {}", self.message),
            (Some(l), None) => format!("{file}:{l}: {}", self.message),
            _ => format!("{file}: {}", self.message),
        }
    }
}

/// Parses `text` into `T`; unknown fields, duplicate keys and wrong types are errors.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(without_bom(text)).map_err(|e| {
        let (line, column) = e.location().map(position).unwrap_or_default();
        let message = Messages.format_message(e.without_snippet());
        YamlError {
            line,
            column,
            // One line: the message follows `file:line:column:` in a list of problems.
            message: message.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    })
}

/// Parses `text` into `T` where a repeated key keeps its last value: for a second look
/// at a text the strict parse rejected.
pub(crate) fn from_str_lenient<T: DeserializeOwned>(text: &str) -> Option<T> {
    let options = serde_saphyr::options! { duplicate_keys: DuplicateKeyPolicy::LastWins };
    serde_saphyr::from_str_with_options(without_bom(text), options).ok()
}

/// `text` without a leading UTF-8 byte-order mark, which editors on Windows write and
/// which is no part of the YAML.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The 1-based line and column of `loc`, when known.
pub(crate) fn position(loc: Location) -> (Option<u32>, Option<u32>) {
    if loc == Location::UNKNOWN || loc.line() == 0 {
        return (None, None);
    }
    let column = u32::try_from(loc.column()).ok().filter(|&c| c > 0);
    (u32::try_from(loc.line()).ok(), column)
}

/// The user-facing messages, with serde's wording for unknown fields and variants (names
/// in backticks) plus a suggestion for a misspelt one.
struct Messages;

impl MessageFormatter for Messages {
    fn format_message<'a>(&self, err: &'a Error) -> Cow<'a, str> {
        match err {
            Error::SerdeUnknownField {
                field, expected, ..
            } => Cow::Owned(format!(
                "unknown field `{field}`{}, {}",
                suggestion(field, expected),
                expected_list(expected, "there are no fields")
            )),
            Error::SerdeUnknownVariant {
                variant, expected, ..
            } => Cow::Owned(format!(
                "unknown variant `{variant}`{}, {}",
                suggestion(variant, expected),
                expected_list(expected, "there are no variants")
            )),
            Error::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list, e.g. [a, b]"),
            Error::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping, e.g. { name: x }"),
            _ => UserMessageFormatter.format_message(err),
        }
    }
}

/// " (did you mean 'x'?)" when one of several expected names is close to `name`.
fn suggestion(name: &str, expected: &[&str]) -> String {
    if expected.len() < 2 {
        return String::new();
    }
    let known: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    suggest(name, known.iter())
}

/// serde's "expected `a`" / "expected one of `a`, `b`".
fn expected_list(expected: &[&str], none: &str) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    match quoted.len() {
        0 => none.to_string(),
        1 => format!("expected {}", quoted[0]),
        _ => format!("expected one of {}", quoted.join(", ")),
    }
}
