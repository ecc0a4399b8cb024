//! The rules of ARCHITECTURE.md §3, checked on the source text: the dependency order between
//! the top-level modules, no circle between the files of a module folder, and which
//! modules may mention Python or the I/O runtime at all.
//!
//! A file depends on a module when its code (not its comments) names it through `crate::`
//! or `super::`. That is a textual reading, not the compiler's, which is enough to keep the
//! layering honest: an arrow the wrong way shows up as a path in the source.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ext", &["run", "py", "config", "log"]),
    (
        "run",
        &[
            "server", "py", "handoff", "http", "metrics", "config", "log",
        ],
    ),
    ("server", &["handoff", "http", "metrics", "config", "log"]),
    ("py", &["handoff", "http", "metrics", "config", "log"]),
    ("metrics", &["config", "log"]),
    ("handoff", &["http"]),
    ("http", &[]),
    ("config", &["http", "log"]),
    ("log", &[]),
];

/// Words a module must never contain in its code.
const FORBIDDEN_WORDS: &[(&str, &[&str])] = &[
    ("http", &["pyo3", "monoio", "ffi::"]),
    ("handoff", &["pyo3", "monoio"]),
    ("server", &["pyo3", "ffi::Py"]),
    ("py", &["monoio", "TcpStream"]),
    ("config", &["pyo3", "monoio"]),
    ("metrics", &["pyo3", "monoio", "ffi::"]),
];

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) is rare in this tree; where a line
            // starts with a comment, drop it whole, else cut at the comment.
            Some(0) => "",
            Some(i) if line[..i].trim().is_empty() => "",
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each occurrence of `prefix` in `code`.
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end > 0 {
            names.push(&after[..end]);
        }
        rest = &after[end..];
    }
    names
}

/// Where a file sits: its top-level module, and its submodule inside that module's
/// folder (`None` for the folder's `mod.rs` and for single-file modules).
fn place(src: &Path, file: &Path) -> (String, Option<String>) {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [single] => (single.clone(), None),
        [top, sub] if sub == "mod" => (top.clone(), None),
        [top, sub, ..] => (top.clone(), Some(sub.clone())),
        [] => unreachable!(),
    }
}

struct Tree {
    /// Top-level module -> top-level modules its files name.
    top: BTreeMap<String, BTreeSet<String>>,
    /// (top-level module, submodule) -> sibling submodules it names.
    sub: BTreeMap<(String, String), BTreeSet<String>>,
    /// Top-level module -> its code, all files joined.
    code: BTreeMap<String, String>,
}

fn read_tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // `lib.rs` is the crate root: it declares the modules, it is not one of them.
    files.retain(|f| f.file_name().is_none_or(|n| n != "lib.rs"));
    let tops: BTreeSet<String> = files.iter().map(|f| place(&src, f).0).collect();
    let mut tree = Tree {
        top: BTreeMap::new(),
        sub: BTreeMap::new(),
        code: BTreeMap::new(),
    };
    for file in &files {
        let (top, sub) = place(&src, file);
        let text = code(&fs::read_to_string(file).expect("readable source"));
        tree.code.entry(top.clone()).or_default().push_str(&text);
        let deps = tree.top.entry(top.clone()).or_default();
        for name in names_after(&text, "crate::") {
            if tops.contains(name) && name != top {
                deps.insert(name.to_string());
            }
        }
        match &sub {
            // In a folder's file, `super::x` is a sibling (or the folder's own items).
            Some(sub) => {
                let siblings = tree.sub.entry((top.clone(), sub.clone())).or_default();
                for name in names_after(&text, "super::") {
                    let sibling_file = src.join(&top).join(format!("{name}.rs"));
                    let sibling_dir = src.join(&top).join(name);
                    if name != sub && (sibling_file.exists() || sibling_dir.is_dir()) {
                        siblings.insert(name.to_string());
                    }
                }
            }
            // In `mod.rs` or a single-file module, `super::x` is the crate's module x.
            None => {
                for name in names_after(&text, "super::") {
                    if tops.contains(name) && name != top {
                        deps.insert(name.to_string());
                    }
                }
            }
        }
    }
    tree
}

/// A circle in `graph`, as the list of nodes around it, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut circle = path[i..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(circle);
        }
    }
    None
}

#[test]
fn top_level_modules_follow_the_dependency_order() {
    let tree = read_tree();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, deps) in &tree.top {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{module}: a new top-level module; give it a place in ALLOWED and ARCHITECTURE.md §3"
            ));
            continue;
        };
        for dep in deps {
            if !ok.contains(&dep.as_str()) {
                wrong.push(format!("{module} uses {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows against ARCHITECTURE.md §3:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        find_circle(&tree.top),
        None,
        "a circle between top-level modules"
    );
}

#[test]
fn no_circle_between_the_files_of_a_module() {
    let tree = read_tree();
    let mut by_folder: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for ((top, sub), siblings) in &tree.sub {
        by_folder
            .entry(top.clone())
            .or_default()
            .insert(sub.clone(), siblings.clone());
    }
    for (folder, graph) in &by_folder {
        if let Some(circle) = find_circle(graph) {
            panic!("a circle in src/{folder}/: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn modules_stay_out_of_what_they_must_not_know() {
    let tree = read_tree();
    for (module, words) in FORBIDDEN_WORDS {
        let code = tree.code.get(*module).expect("module exists");
        for word in *words {
            assert!(
                !code.contains(word),
                "src/{module} mentions `{word}` (ARCHITECTURE.md §3)"
            );
        }
    }
}

#[test]
fn the_checker_sees_what_it_must() {
    // The analysis itself: a circle is found, a comment is not code.
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_circle(&graph).is_some());
    let text = code("use crate::py::Pool; // crate::server\n/// crate::run\n");
    assert_eq!(names_after(&text, "crate::"), vec!["py"]);
}
