//! Test support shared by llmrec's test suites.
//!
//! Tests that need real inputs (the datasets under `$LLMREC_DATA_DIR`, the
//! small models that `scripts/fetch-models.sh` fetches) ask for them here. One
//! policy decides what happens when one is missing:
//!
//! - by default the test **fails**, with a message naming the missing file
//!   and the command that provides it;
//! - with `LLMREC_ALLOW_SKIP=1` the test returns early instead, and the skip
//!   is appended to the test log (`$LLMREC_TEST_LOG`), which `scripts/test.sh`
//!   counts and prints after `cargo test`, where nothing hides it.
//!
//! Tests also record what they exercised (for example which embedding kernel
//! ran) with [`note`], and a kernel this CPU cannot run with [`cpu_feature`];
//! `scripts/test.sh` prints those lines too.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to let tests whose inputs are missing skip instead of fail.
pub const ALLOW_SKIP_ENV: &str = "LLMREC_ALLOW_SKIP";
/// File that skips and notes are appended to (set by `scripts/test.sh`).
pub const TEST_LOG_ENV: &str = "LLMREC_TEST_LOG";
/// Folder holding the datasets (`<name>/...`).
pub const DATA_DIR_ENV: &str = "LLMREC_DATA_DIR";
/// Folder holding the fetched models.
pub const MODELS_DIR_ENV: &str = "LLMREC_MODELS_DIR";
/// The command that fetches the small models.
pub const FETCH_MODELS: &str = "scripts/fetch-models.sh";

/// The repository root (two folders above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether skipping was chosen explicitly (`LLMREC_ALLOW_SKIP` set to
/// anything but empty or `0`).
pub fn skip_allowed() -> bool {
    std::env::var_os(ALLOW_SKIP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}

fn append_log(kind: &str, text: &str) {
    let Some(path) = std::env::var_os(TEST_LOG_ENV).filter(|v| !v.is_empty()) else {
        return;
    };
    let line = format!("{kind}\t{}\t{}\n", test_name(), text.replace('\n', " "));
    // One write of a short line on an append-mode file: lines of tests running
    // in parallel do not interleave.
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        eprintln!(
            "llmrec-testkit: cannot append to {}: {e}",
            Path::new(&path).display()
        );
    }
}

/// Records a line about what this test exercised (printed by `scripts/test.sh`).
pub fn note(text: &str) {
    eprintln!("note: {text}");
    append_log("note", text);
}

/// The message a missing input produces.
pub fn missing_message(what: &str, fix: &str) -> String {
    format!(
        "{what} is missing; {fix}. To let tests skip when their inputs are missing, \
         set {ALLOW_SKIP_ENV}=1 (scripts/test.sh then counts the skips)"
    )
}

/// Handles a missing input: panics with [`missing_message`], or, when
/// skipping is allowed, records the skip and returns `None` so that the test
/// can return early (`let Some(x) = ... else { return };`).
#[track_caller]
pub fn missing<T>(what: &str, fix: &str) -> Option<T> {
    let msg = missing_message(what, fix);
    skip_or_panic(skip_allowed(), &msg);
    eprintln!("SKIPPED ({ALLOW_SKIP_ENV} is set): {msg}");
    append_log("skip", &format!("{what}; {fix}"));
    None
}

/// Panics with `msg` unless skipping is allowed.
#[track_caller]
fn skip_or_panic(allow_skip: bool, msg: &str) {
    if !allow_skip {
        panic!("{msg}");
    }
}

/// The datasets folder: `$LLMREC_DATA_DIR`, else `../shared/data` beside the
/// repository when it exists. `None` (after recording a skip) or a panic when
/// neither is there.
#[track_caller]
pub fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        let d = PathBuf::from(d);
        if d.is_dir() {
            return Some(std::fs::canonicalize(&d).unwrap_or(d));
        }
        return missing(
            &format!("the datasets folder {} ({DATA_DIR_ENV})", d.display()),
            &format!("point {DATA_DIR_ENV} at the folder holding ml-1m-sas/, amazon-beauty/, ..."),
        );
    }
    let beside = repo_root().join("../shared/data");
    if beside.is_dir() {
        return Some(std::fs::canonicalize(&beside).unwrap_or(beside));
    }
    missing(
        &format!(
            "the datasets folder ({DATA_DIR_ENV} is unset and {} does not exist)",
            beside.display()
        ),
        &format!("set {DATA_DIR_ENV} to the folder holding the datasets (absolute path)"),
    )
}

/// A file or folder of a dataset, `<data dir>/<rel>`; missing is handled as in
/// [`missing`].
#[track_caller]
pub fn dataset_path(rel: &str) -> Option<PathBuf> {
    let p = data_dir()?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        missing(
            &format!("dataset file {}", p.display()),
            &format!("put the dataset under {DATA_DIR_ENV} (see the dataset's PROVENANCE.md)"),
        )
    }
}

/// The models folder: `$LLMREC_MODELS_DIR`, else `./models` at the repository root.
pub fn models_dir() -> PathBuf {
    std::env::var_os(MODELS_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// A fetched model file or folder, `<models dir>/<rel>`; missing is handled
/// as in [`missing`], naming the fetch command.
#[track_caller]
pub fn model_path(rel: &str) -> Option<PathBuf> {
    let p = models_dir().join(rel);
    if p.exists() {
        Some(p)
    } else {
        missing(
            &format!("model file {}", p.display()),
            &format!("run {FETCH_MODELS} (it fills {MODELS_DIR_ENV}, default ./models)"),
        )
    }
}

/// Path of the MiniLM model folder (`all-MiniLM-L6-v2/`, with its weights).
#[track_caller]
pub fn minilm_dir() -> Option<PathBuf> {
    model_path("all-MiniLM-L6-v2/model.safetensors")
        .map(|p| p.parent().map(Path::to_path_buf).unwrap_or(p))
}

/// Path of the SmolLM2-135M-Instruct GGUF file.
#[track_caller]
pub fn smollm2_path() -> Option<PathBuf> {
    model_path("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Path of the Gemma 3 270M (Q4_K_M) GGUF file.
#[track_caller]
pub fn gemma3_path() -> Option<PathBuf> {
    model_path("gemma-3-270m-q4_k_m.gguf")
}

/// Variable listing CPU features (comma-separated, as named in tests, e.g.
/// `amx,avx512`) whose absence fails the tests instead of being reported.
pub const REQUIRE_CPU_ENV: &str = "LLMREC_REQUIRE_CPU";

/// A kernel that needs a CPU feature: `true` when this CPU has it. A kernel this CPU
/// lacks cannot run here; the test then checks what it can (e.g. that the dispatcher
/// picks the fallback) and this records a note that the kernel was **not exercised**,
/// which `scripts/test.sh` prints. Listed in `LLMREC_REQUIRE_CPU`, a missing feature
/// fails the test instead.
#[track_caller]
pub fn cpu_feature(feature: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let required = std::env::var(REQUIRE_CPU_ENV).unwrap_or_default();
    if required
        .split(',')
        .any(|f| f.trim().eq_ignore_ascii_case(feature))
    {
        panic!(
            "the CPU feature {feature} is missing on this machine, and {REQUIRE_CPU_ENV} requires it"
        );
    }
    note(&format!(
        "NOT EXERCISED: this CPU lacks {feature}, so its kernel did not run"
    ));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "run scripts/fetch-models.sh")]
    fn missing_fails_unless_skipping_was_chosen() {
        let msg = missing_message("model file /x/y.gguf", "run scripts/fetch-models.sh");
        skip_or_panic(false, &msg);
    }

    #[test]
    fn skipping_goes_on_when_chosen() {
        skip_or_panic(true, "model file /x/y.gguf is missing");
    }

    #[test]
    fn message_names_the_file_and_the_fix() {
        let m = missing_message("model file /x/y.gguf", "run scripts/fetch-models.sh");
        assert!(m.contains("/x/y.gguf") && m.contains("scripts/fetch-models.sh"));
        assert!(m.contains(ALLOW_SKIP_ENV));
    }
}
