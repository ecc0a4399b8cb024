//! `--reload`, for development: a thread that looks every second at the Python files under
//! the application's directories (the working directory, or `--chdir`, and each
//! `--pythonpath`) and asks the supervisor for the same reload as SIGHUP when one changes,
//! appears or goes. Polling, not inotify: no dependency, nothing to run out of (watches),
//! and a second is quick enough for a person saving a file. A file with a syntax error
//! fails the new workers' import, so the old ones keep serving (`supervise.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::log_warn;

/// How often the files are looked at.
const EVERY: Duration = Duration::from_secs(1);
/// Past this many files the walk stops (a virtual environment under the project, say, is
/// skipped already; this bounds what is left) and says so once.
const MAX_FILES: usize = 20_000;

/// Directories never looked into: caches, version control, virtual environments (a
/// directory holding `pyvenv.cfg`) and Node's packages.
fn skipped(dir: &Path) -> bool {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(
        name,
        "__pycache__" | ".git" | ".hg" | ".svn" | ".tox" | ".nox" | "node_modules" | ".mypy_cache"
    ) || dir.join("pyvenv.cfg").exists()
}

type Snapshot = BTreeMap<PathBuf, SystemTime>;

fn snapshot(roots: &[PathBuf], warned: &mut bool) -> Snapshot {
    let mut files = Snapshot::new();
    let mut dirs: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !skipped(&path) {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "py") {
                if files.len() >= MAX_FILES {
                    if !*warned {
                        log_warn!("--reload: more than {MAX_FILES} Python files under {}; watching the first {MAX_FILES}", roots[0].display());
                        *warned = true;
                    }
                    return files;
                }
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                files.insert(path, modified);
            }
        }
    }
    files
}

/// The first difference between two snapshots, for the log.
fn first_change(old: &Snapshot, new: &Snapshot) -> Option<PathBuf> {
    for (path, modified) in new {
        if old.get(path) != Some(modified) {
            return Some(path.clone());
        }
    }
    old.keys().find(|path| !new.contains_key(*path)).cloned()
}

/// Watches `roots` until `done`; `changed(path)` is called for each change seen.
pub fn start(
    roots: Vec<PathBuf>,
    done: Arc<AtomicBool>,
    changed: impl Fn(PathBuf) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("spindle-reload".into())
        .spawn(move || {
            let mut warned = false;
            let mut seen = snapshot(&roots, &mut warned);
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(EVERY);
                let now = snapshot(&roots, &mut warned);
                if let Some(path) = first_change(&seen, &now) {
                    changed(path);
                }
                seen = now;
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_additions_and_removals_are_seen() {
        let t0 = SystemTime::UNIX_EPOCH;
        let t1 = t0 + Duration::from_secs(1);
        let a = PathBuf::from("a.py");
        let b = PathBuf::from("b.py");
        let old: Snapshot = [(a.clone(), t0), (b.clone(), t0)].into();
        assert_eq!(first_change(&old, &old.clone()), None);
        let touched: Snapshot = [(a.clone(), t1), (b.clone(), t0)].into();
        assert_eq!(first_change(&old, &touched), Some(a.clone()));
        let removed: Snapshot = [(a.clone(), t0)].into();
        assert_eq!(first_change(&old, &removed), Some(b.clone()));
        let added: Snapshot = [(a, t0), (b, t0), (PathBuf::from("c.py"), t0)].into();
        assert_eq!(first_change(&old, &added), Some(PathBuf::from("c.py")));
    }
}
