//! `cargo xtask tidy`: format the workspace and find leftover placeholder macros.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Result, cargo};

/// The macros that must not stay in non-test sources. The names are joined with `!(` at run time so
/// that this file does not match itself.
const MACROS: [&str; 3] = ["todo", "unimplemented", "dbg"];

/// Runs `cargo fmt --all`, then lists every placeholder macro call in non-test sources; fails if
/// there is one.
pub fn run(root: &Path) -> Result<()> {
    cargo(root, ["fmt", "--all"], &[]).status()?;
    let mut files = Vec::new();
    collect_sources(root, &mut files)?;
    files.sort();
    let mut found = 0;
    for file in &files {
        let text =
            fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for (number, line) in placeholder_lines(&text) {
            println!(
                "{}:{number}: {}",
                file.strip_prefix(root).unwrap_or(file).display(),
                line.trim()
            );
            found += 1;
        }
    }
    let names = MACROS.map(|name| format!("{name}!")).join(", ");
    if found == 0 {
        println!("no {names} in {} non-test source files", files.len());
        Ok(())
    } else {
        Err(format!("{found} calls of {names} in non-test sources"))
    }
}

/// Collects the non-test Rust sources under `dir`: every `.rs` file except those in hidden
/// directories, `target/` and `tests/` directories, and files named `tests.rs`.
fn collect_sources(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if kind.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "tests" {
                collect_sources(&path, files)?;
            }
        } else if kind.is_file() && name.ends_with(".rs") && name != "tests.rs" {
            files.push(path);
        }
    }
    Ok(())
}

/// The numbered lines (from 1) of `text` that call a placeholder macro. Comment lines do not count,
/// and neither does anything from the first `#[cfg(test)]` on (test modules come last by custom).
fn placeholder_lines(text: &str) -> Vec<(usize, &str)> {
    let patterns = MACROS.map(|name| format!("{name}!("));
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| {
            patterns
                .iter()
                .any(|pattern| line.contains(pattern.as_str()))
        })
        .map(|(index, line)| (index + 1, line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders_outside_tests_and_comments() {
        let text = "fn a() {\n    todo!()\n}\n// dbg!(x) in a comment\nfn b() { let _ = dbg!(1); }\n\
                    #[cfg(test)]\nmod tests { fn c() { unimplemented!() } }\n";
        let lines: Vec<usize> = placeholder_lines(text)
            .into_iter()
            .map(|(number, _)| number)
            .collect();
        assert_eq!(lines, [2, 5]);
    }
}
