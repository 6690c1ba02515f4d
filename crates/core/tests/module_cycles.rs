//! The core's top-level modules form layers: no module imports one that
//! imports it back, directly or through others. A cycle is where a change
//! in one layer ripples through all of them (it was once 23 files through
//! `api`, `config`, `jobs` and `metrics`), so this test reads the sources
//! and fails naming the imports that close one.
//!
//! It reads paths as text: `crate::x`, `use crate::{x::.., y}` and a
//! top-level module file's `super::x`. Comments and test modules are left
//! out; so are strings, to the extent that a path never appears in one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).expect("a readable source folder") {
            let path = entry.expect("a readable entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without its comments and its test module (by the
/// crate's habit, `#[cfg(test)] mod tests` comes last).
fn code(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            code.push('\n');
            continue;
        }
        // A trailing comment; `://` is a URL in a string, not one.
        let end = line
            .match_indices("//")
            .find(|(i, _)| !line[..*i].ends_with(':'))
            .map_or(line.len(), |(i, _)| i);
        code.push_str(&line[..end]);
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first identifier of `text`, skipping blanks.
fn first_ident(text: &str) -> &str {
    let text = text.trim_start();
    let end = text.find(|c: char| !is_ident(c)).unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a path starting at `rest` (just after `crate::`)
/// names: one, or each item of a `{..}` group.
fn named_modules(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    let Some(group) = rest.strip_prefix('{') else {
        return vec![first_ident(rest).to_owned()];
    };
    let (mut depth, mut item_start, mut names) = (0usize, true, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if depth == 0 && item_start && is_ident(c) => {
                names.push(first_ident(&group[i..]).to_owned());
                item_start = false;
            }
            _ => {}
        }
    }
    names
}

/// Each module a file's code imports from the crate root, with its line.
fn imports(code: &str, top_level_file: bool) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let roots = ["crate::"]
            .into_iter()
            .chain(top_level_file.then_some("super::"));
        for root in roots {
            for (at, _) in line.match_indices(root) {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| is_ident(c) || c == ':') {
                    continue;
                }
                for module in named_modules(&line[at + root.len()..]) {
                    found.push((module, number + 1));
                }
            }
        }
    }
    found
}

#[test]
fn no_import_cycle_between_the_cores_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = code(&fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_owned)
        .collect();
    assert!(
        modules.len() > 10,
        "lib.rs declares the modules: {modules:?}"
    );

    // from -> to -> where first seen
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in sources(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let from = parts[0].clone();
        if !modules.contains(&from) || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let top_level_file = parts.len() == 1 || (parts.len() == 2 && parts[1] == "mod");
        let text = fs::read_to_string(&file).expect("a readable source file");
        for (to, line) in imports(&code(&text), top_level_file) {
            if to != from && modules.contains(&to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", relative.display()));
            }
        }
    }
    assert!(
        graph.get("api").is_some_and(|to| to.contains_key("router")),
        "the scan sees imports (api uses the router): {graph:?}"
    );

    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {}  ({})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!(
            "an import cycle between the core's modules:\n{}",
            steps.join("\n")
        );
    }
}

/// A cycle `a, b, .., a` of `graph`, if it has one (depth first).
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_scan_reads_groups_and_skips_comments_and_tests() {
    assert_eq!(named_modules(" router::Router;"), ["router"]);
    assert_eq!(
        named_modules("{admission::{A, B}, jobs, outcome::Kind};"),
        ["admission", "jobs", "outcome"]
    );
    let text = "use crate::a::X; // crate::b\n// crate::c\nlet u = \"http://x\"; crate::d::f();\n#[cfg(test)]\nmod tests {\n use crate::e;\n}\n";
    let found: Vec<String> = imports(&code(text), false)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(found, ["a", "d"]);
    let found: Vec<String> = imports("use super::x::Y;\n", true)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(found, ["x"]);
    assert!(imports("use super::x::Y;\n", false).is_empty());
    let graph: BTreeMap<String, BTreeMap<String, String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(a, b)| {
            (
                a.to_owned(),
                BTreeMap::from([(b.to_owned(), String::new())]),
            )
        })
        .collect();
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
}
