//! Checkpoint folders shared by every model: `weights.safetensors`, the optimizer's
//! moments (`optimizer.safetensors`, in `last/` only), and `checkpoint.json`, whose
//! `format_version` and `model` are checked before anything else is read.
//!
//! A folder is written whole through `<dir>.tmp` and renames
//! ([`llmrec_core::io::write_dir`]), so a crash leaves the old folder or the new one,
//! never half of each; readers go through [`settled`].

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;
use llmrec_core::io::{settled_dir, write_atomic, write_dir};
use llmrec_core::{Dataset, Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::optim::AdamW;

/// The JSON file of every checkpoint folder.
pub const META_FILE: &str = "checkpoint.json";

/// The weights file of a checkpoint folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The optimizer moments inside a `last/` checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// An [`Error::Artifact`] about `path`.
pub fn artifact(path: &Path, message: impl Into<String>) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The complete checkpoint at `dir`: `dir` itself, or `dir.old` when a crash came
/// between the two renames of a write.
pub fn settled(dir: &Path) -> PathBuf {
    settled_dir(dir, META_FILE)
}

/// The variables of `varmap` by name.
pub fn tensors(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| Error::model("checkpoint", "variable map lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// Writes the checkpoint folder `dir` (replacing it whole): the `weights`, the
/// optimizer's moments when given, `meta` as `checkpoint.json`, and whatever `extra`
/// writes into the folder.
pub fn write(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    meta: &impl Serialize,
    optimizer: Option<&AdamW>,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Invalid(format!("json: {e}")))?;
    write_dir(dir, |tmp| {
        let w = tmp.join(WEIGHTS_FILE);
        candle_core::safetensors::save(weights, &w)
            .map_err(|e| artifact(&w, format!("cannot write weights: {e}")))?;
        if let Some(opt) = optimizer {
            opt.save(&tmp.join(OPTIMIZER_FILE))?;
        }
        extra(tmp)?;
        write_atomic(&tmp.join(META_FILE), &json)
    })
}

/// Reads `dir/checkpoint.json` as `T`, after checking that its `format_version` is one
/// of `versions` and its `model` is `model`; every refusal names the file.
pub fn read_meta<T: DeserializeOwned>(
    dir: &Path,
    model: &str,
    versions: RangeInclusive<u32>,
) -> Result<T> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| artifact(&path, format!("not a valid checkpoint JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if u32::try_from(v).is_ok_and(|v| versions.contains(&v)) => {}
        Some(v) => {
            return Err(artifact(
                &path,
                format!(
                    "{model} checkpoint format version {v} is not supported by this build (it reads {} to {}); retrain or use a matching llmrec version",
                    versions.start(),
                    versions.end()
                ),
            ));
        }
        None => {
            return Err(artifact(
                &path,
                "no `format_version`: not an llmrec checkpoint",
            ));
        }
    }
    match value.get("model").and_then(|m| m.as_str()) {
        Some(m) if m == model => {}
        other => {
            return Err(artifact(
                &path,
                format!("a `{}` checkpoint, not {model}", other.unwrap_or("?")),
            ));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| artifact(&path, format!("invalid checkpoint metadata: {e}")))
}

/// Refuses a checkpoint made on another dataset than `dataset`.
pub fn check_dataset(path: &Path, name: &str, fingerprint: &str, dataset: &Dataset) -> Result<()> {
    let fp = dataset.fingerprint();
    if fingerprint != fp {
        return Err(artifact(
            path,
            format!(
                "trained on dataset `{name}` (fingerprint {fingerprint}), but the data given is `{}` (fingerprint {fp}); use the dataset the checkpoint was trained on",
                dataset.name
            ),
        ));
    }
    Ok(())
}

/// The `epoch` a checkpoint folder records, if it holds a readable checkpoint.
pub fn checkpoint_epoch(dir: &Path) -> Option<usize> {
    let dir = settled(dir);
    let text = std::fs::read(dir.join(META_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.get("epoch")?.as_u64().map(|e| e as usize)
}
