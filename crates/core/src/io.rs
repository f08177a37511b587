//! Crash-safe file output shared by every crate: artifacts are written to a
//! temporary file in the same folder, synced, then renamed into place, so a
//! reader never sees a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Lets `write` fill a temporary path next to `path` (for writers that take a
/// path, such as safetensors), then renames it into place. On error the
/// temporary file is removed and `path` is untouched.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `path` with `suffix` appended to its file name (`run/best` and `.tmp` give
/// `run/best.tmp`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Flushes every file directly in `dir` to disk (not those in subfolders), then
/// `dir`'s own list of entries.
pub fn sync_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(|e| Error::io(&path, e))?
            .is_file();
        if is_file {
            // Opened for writing (without truncating): Windows flushes only such handles.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_entries(dir)
}

/// Flushes a folder's list of entries (renames, new files) on Unix; elsewhere a no-op.
fn sync_entries(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Puts the complete folder `tmp` in the place of the folder `dir` (a checkpoint, say),
/// so that at every moment one complete folder is at `dir` or at `dir.old`
/// ([`settled_dir`] finds it). `tmp` is flushed to disk first; the old folder moves
/// aside before the new one takes its name, and is deleted only after.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    sync_dir(tmp)?;
    let old = sibling(dir, ".old");
    // `dir` exists only as a complete folder (it is only ever made by the rename
    // below). Without it, `dir.old` is the one complete copy left by an earlier crash:
    // it stays until the new folder is in place.
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_entries(dir.parent().unwrap_or(Path::new(".")))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Writes the folder `dir` whole: `fill` writes into a fresh `dir.tmp`, which then
/// replaces `dir` through [`replace_dir`]. On an error from `fill`, `dir.tmp` is removed
/// and `dir` is untouched.
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, dir)
}

/// The complete folder that [`replace_dir`] left for `dir`: `dir` itself, or `dir.old`
/// when a crash came between its two renames. `marker` is a file that every complete
/// folder holds (written last). Meant for a single writer, and readers that come after
/// it (a resume after a crash); a reader racing a running `replace_dir` may see the
/// folder move.
pub fn settled_dir(dir: &Path, marker: &str) -> PathBuf {
    let old = sibling(dir, ".old");
    if !dir.join(marker).exists() && old.join(marker).exists() {
        old
    } else {
        dir.to_path_buf()
    }
}

/// `s` as one safe path component: ASCII letters, digits, `-` and `.` kept, every
/// other character `_` (model and dataset names become folder names).
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())
}

/// Writes `records` as JSON lines (one compact record per line), atomically: the
/// twin of [`read_jsonl`].
pub fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)
            .map_err(|e| Error::Invalid(format!("serialising {}: {e}", path.display())))?;
        buf.push(b'\n');
    }
    write_atomic(path, &buf)
}

/// Reads a JSON-lines file, one `T` per non-blank line; a bad line is an error
/// naming the file and line, and saying it expected `what`.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("expected {what}: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = std::env::temp_dir().join(format!("llmrec-io-{}", std::process::id()));
        let p = d.join("a.json");
        write_atomic(&p, b"1").unwrap();
        write_json(&p, &vec![2]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "[\n  2\n]");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn slug_keeps_safe_characters_only() {
        assert_eq!(
            slug("SmolLM2-135M-Instruct.Q4_1"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(slug("a/b c:é"), "a_b_c__");
    }

    #[test]
    fn jsonl_round_trip_and_bad_line_named() {
        let d = std::env::temp_dir().join(format!("llmrec-io-jsonl-{}", std::process::id()));
        let p = d.join("r.jsonl");
        write_jsonl(&p, &[(1, "a".to_string()), (2, "b\nc".to_string())]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "[1,\"a\"]\n[2,\"b\\nc\"]\n"
        );
        let back: Vec<(u32, String)> = read_jsonl(&p, "a pair").unwrap();
        assert_eq!(back, vec![(1, "a".to_string()), (2, "b\nc".to_string())]);
        std::fs::write(&p, "[1,\"a\"]\n\n{oops\n").unwrap();
        let err = read_jsonl::<(u32, String)>(&p, "a pair")
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.jsonl:3: expected a pair"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn folders_are_replaced_whole_and_a_crash_leaves_the_old_one() {
        let d = std::env::temp_dir().join(format!("llmrec-io-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let dir = d.join("best");
        let fill = |v: &str| {
            let tmp = sibling(&dir, ".tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            write_atomic(&tmp.join("weights"), v.as_bytes()).unwrap();
            write_atomic(&tmp.join("meta.json"), v.as_bytes()).unwrap();
            tmp
        };
        replace_dir(&fill("1"), &dir).unwrap();
        replace_dir(&fill("2"), &dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("weights")).unwrap(), "2");
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["best"], "no .tmp or .old left");
        assert_eq!(settled_dir(&dir, "meta.json"), dir);
        // A crash between the renames: the old folder is aside, the new one not in place.
        std::fs::rename(&dir, sibling(&dir, ".old")).unwrap();
        fill("3");
        assert_eq!(settled_dir(&dir, "meta.json"), sibling(&dir, ".old"));
        // The next save cleans up and lands.
        replace_dir(&fill("4"), &dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("meta.json")).unwrap(), "4");
        assert!(!sibling(&dir, ".old").exists() && !sibling(&dir, ".tmp").exists());
        assert_eq!(sibling(Path::new("a/b"), ".x"), Path::new("a/b.x"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
