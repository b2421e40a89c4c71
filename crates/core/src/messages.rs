//! What a user reads when a file they gave cannot be read or parsed: one
//! line saying where and what to change, without the parser's API names
//! (`use from_str_multiple`), its internal counters (`Nodes { nodes: 250001
//! }`), source snippets or the OS's error numbers (`(os error 2)`).

use std::io;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DefaultMessageFormatter, Error};

/// A YAML parse error as one line: the parser's own wording for syntax and
/// type errors (`unknown field `x`, expected one of a, b at line 3, column
/// 1`), ours for the limits it enforces and for a second document where one
/// is expected.
pub fn yaml_error(error: &Error) -> String {
    let line = error.location().map_or(0, |l| l.line());
    // An error met while expanding an alias comes wrapped with where the
    // alias was defined and used (and possibly a snippet): unwrapped, so an
    // alias bomb's budget breach gets the plain message too.
    let mut inner = error;
    let mut via_alias = false;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = inner {
        via_alias |= matches!(inner, Error::AliasError { .. });
        inner = error;
    }
    match inner {
        Error::Budget {
            breach: BudgetBreach::Nodes { .. },
            ..
        } if via_alias => format!(
            "the file's YAML aliases (*name) expand to more than {} values (scalars, lists and \
             mappings), the most gpu-slicer reads from one file: write the values out instead of \
             repeating aliases",
            serde_saphyr::Budget::default().max_nodes
        ),
        Error::MultipleDocuments { .. } => format!(
            "a second YAML document starts at line {line} (after `---`), but this file holds \
             one: remove the separator or put each document in its own file"
        ),
        Error::Budget { breach, .. } => budget_message(breach, line),
        _ => types_in_words(
            &error
                .render_with_options(serde_saphyr::render_options! {
                    formatter: &DefaultMessageFormatter,
                    snippets: serde_saphyr::SnippetMode::Off,
                })
                .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
        ),
    }
}

/// A deserializer's message with Rust's type names in words: `invalid type:
/// string "x", expected u32` → `... expected a whole number`, `invalid u32`
/// → `not a whole number`, `expected sequence start` → `expected a list`.
pub fn types_in_words(message: &str) -> String {
    const WHOLE: [&str; 6] = ["u8", "u16", "u32", "u64", "u128", "usize"];
    const INTEGER: [&str; 6] = ["i8", "i16", "i32", "i64", "i128", "isize"];
    let mut text = message.to_string();
    for (names, expected, invalid) in [
        (
            &WHOLE[..],
            "a whole number (0 or more)",
            "not a whole number (0 or more)",
        ),
        (&INTEGER[..], "an integer", "not an integer"),
        (
            &["f32", "f64", "floating point"][..],
            "a number",
            "not a number",
        ),
        (&["boolean"][..], "true or false", "not true or false"),
        (
            &["sequence start", "a sequence"][..],
            "a list",
            "not a list",
        ),
        (
            &["mapping start", "a map"][..],
            "a mapping",
            "not a mapping",
        ),
    ] {
        for name in names {
            text = replace_word(
                &text,
                &format!("expected {name}"),
                &format!("expected {expected}"),
            );
            text = replace_word(&text, &format!("invalid {name}"), invalid);
        }
    }
    text
}

/// Replaces `from` where it is not followed by a letter, digit or `_`
/// (`expected u32` but not `expected u32x`).
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn budget_message(breach: &BudgetBreach, line: u64) -> String {
    let limits = serde_saphyr::Budget::default();
    let split = "split it into smaller files";
    match breach {
        BudgetBreach::Nodes { .. } => format!(
            "the file holds more than {} YAML values (scalars, lists and mappings), the most \
             gpu-slicer reads from one file: {split}",
            limits.max_nodes
        ),
        BudgetBreach::Documents { .. } => format!(
            "the file holds more than {} YAML documents, the most gpu-slicer reads from one \
             file: {split}",
            limits.max_documents
        ),
        BudgetBreach::Depth { .. } => format!(
            "lists and mappings are nested more than {} levels deep at line {line}, the most \
             gpu-slicer reads: check for unbalanced brackets",
            limits.max_depth
        ),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::MergeKeys { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => "the file uses more YAML anchors, aliases \
             (&name, *name) or merge keys (<<) than gpu-slicer expands: write the values out"
            .to_string(),
        _ => format!("the file is larger than gpu-slicer reads at once: {split}"),
    }
}

/// Why a file could not be read, in words: `no such file or directory`,
/// `it is a directory, not a file`, without `(os error N)`.
pub fn io_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "it is a directory, not a file".into(),
        io::ErrorKind::NotADirectory => "a part of the path is not a directory".into(),
        io::ErrorKind::InvalidData => "it is not UTF-8 text".into(),
        _ => {
            let text = error.to_string();
            match text.rfind(" (os error ") {
                Some(at) => text[..at].to_string(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        let e = serde_saphyr::from_str::<serde_json::Value>(text).unwrap_err();
        yaml_error(&e)
    }

    #[test]
    fn a_second_document_is_named_in_words() {
        assert_eq!(
            parse_error("a: 1\n---\nb: 2\n"),
            "a second YAML document starts at line 3 (after `---`), but this file holds one: \
             remove the separator or put each document in its own file"
        );
    }

    #[test]
    fn limits_say_which_and_what_to_do() {
        let many: String = (0..250_001).map(|i| format!("- {i}\n")).collect();
        let e = parse_error(&many);
        assert_eq!(
            e,
            "the file holds more than 250000 YAML values (scalars, lists and mappings), the \
             most gpu-slicer reads from one file: split it into smaller files"
        );
        // An alias bomb: 10 aliases of 10 aliases of ... (10^6 values).
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..7 {
            let uses = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{uses}]\n"));
        }
        assert_eq!(
            parse_error(&bomb),
            "the file's YAML aliases (*name) expand to more than 250000 values (scalars, lists \
             and mappings), the most gpu-slicer reads from one file: write the values out \
             instead of repeating aliases"
        );
        let deep = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            parse_error(&deep),
            "lists and mappings are nested more than 64 levels deep at line 1, the most \
             gpu-slicer reads: check for unbalanced brackets"
        );
    }

    #[test]
    fn syntax_errors_keep_the_parser_s_words_on_one_line() {
        assert_eq!(
            parse_error("flags: [\n"),
            "unclosed bracket '[' at line 1, column 8"
        );
        assert_eq!(
            parse_error("a: 1\na: 2\n"),
            "duplicate mapping key: a at line 2, column 1"
        );
    }

    #[test]
    fn rust_type_names_are_said_in_words() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Gpu {
            count: u32,
            share: f64,
            on: bool,
        }
        let parse = |text: &str| {
            let e = serde_saphyr::from_str::<Vec<Gpu>>(text).unwrap_err();
            yaml_error(&e)
        };
        assert_eq!(
            parse("- {count: many, share: 1, on: true}\n"),
            "not a whole number (0 or more) at line 1, column 11"
        );
        assert_eq!(
            parse("- {count: 1, share: half, on: true}\n"),
            "not a number at line 1, column 21"
        );
        assert_eq!(
            parse("- {count: 1, share: 1, on: maybe}\n"),
            "not true or false at line 1, column 28"
        );
        assert_eq!(parse("gpus: 3\n"), "expected a list at line 1, column 1");
        let e = serde_json::from_value::<Gpu>(serde_json::json!({"count": -2})).unwrap_err();
        assert_eq!(
            types_in_words(&e.to_string()),
            "invalid value: integer `-2`, expected a whole number (0 or more)"
        );
        assert_eq!(types_in_words("expected u32x"), "expected u32x");
    }

    #[test]
    fn io_errors_are_words_without_os_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let read = |p: &std::path::Path| io_error(&std::fs::read_to_string(p).unwrap_err());
        assert_eq!(
            read(&dir.path().join("missing.yaml")),
            "no such file or directory"
        );
        assert_eq!(read(dir.path()), "it is a directory, not a file");
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(read(&binary), "it is not UTF-8 text");
        let other = io::Error::from_raw_os_error(28);
        assert_eq!(io_error(&other), "No space left on device");
    }
}
