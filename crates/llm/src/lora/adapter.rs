//! Adapter checkpoints: `adapter.safetensors` (each adapter's `lora_a` and `lora_b`)
//! and `checkpoint.json` (format version, the base model's file and sha256, the LoRA
//! settings, the data's file and sha256, the round and its validation loss, and in
//! `last/` the loop state), with the optimiser's moments in `last/`. An adapter only
//! loads on the base file it was trained on.
//!
//! Loading merges: each target weight becomes `W + (alpha / rank) B A`, so the local
//! backend runs a fine-tuned model at the base model's speed. [`export_merged_gguf`]
//! writes that merged model as a GGUF file that llama.cpp (and this backend) serve.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use llmrec_core::io::sibling;
use llmrec_core::{Error, Result};
use llmrec_models::checkpoint::{self, META_FILE, artifact};
use llmrec_models::learner::LoopState;
use serde::{Deserialize, Serialize};

use super::config::{LoraConfig, Target};
use super::data::{DataReport, file_sha256};
use super::model::var_name;
use crate::gguf::GgufFile;

/// Version of the adapter format written and read by this build.
pub const ADAPTER_VERSION: u32 = 1;

/// The weights file of an adapter folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

/// A file an adapter depends on: its name and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path as given when training.
    pub file: PathBuf,
    /// sha256 of its bytes.
    pub sha256: String,
}

/// `checkpoint.json` of an adapter folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// [`ADAPTER_VERSION`].
    pub format_version: u32,
    /// Always `lora`.
    pub model: String,
    /// The base model the adapter belongs to.
    pub base: FileRef,
    /// The adapters' settings.
    pub lora: LoraConfig,
    /// The training data.
    pub data: FileRef,
    /// How the data was split and sized.
    pub data_report: DataReport,
    /// The round (validation period) this checkpoint was written after.
    pub epoch: usize,
    /// Validation metrics of this round (empty when it was not validated).
    #[serde(default)]
    pub valid: BTreeMap<String, f64>,
    /// The training loop's state (in `last/` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<LoopState>,
}

/// Writes an adapter folder (replacing it whole): the adapters' tensors, `meta`, and
/// the optimiser's moments when given.
pub(crate) fn save(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &AdapterMeta,
    optimizer: Option<&llmrec_models::optim::AdamW>,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Invalid(format!("json: {e}")))?;
    llmrec_core::io::write_dir(dir, |tmp| {
        let w = tmp.join(ADAPTER_FILE);
        candle_core::safetensors::save(tensors, &w)
            .map_err(|e| artifact(&w, format!("cannot write the adapter: {e}")))?;
        if let Some(opt) = optimizer {
            opt.save(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
        }
        llmrec_core::io::write_atomic(&tmp.join(META_FILE), &json)
    })
}

/// A trained adapter, ready to merge into its base model.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its `checkpoint.json`.
    pub meta: AdapterMeta,
    /// The folder it was read from.
    pub dir: PathBuf,
    tensors: HashMap<String, Tensor>,
    weights_sha256: String,
}

impl Adapter {
    /// Reads an adapter folder and checks it against the base file `base` (by
    /// sha256); every refusal names the file.
    pub fn load(dir: &Path, base: &Path) -> Result<Adapter> {
        let dir = checkpoint::settled(dir);
        let meta: AdapterMeta =
            checkpoint::read_meta(&dir, "lora", ADAPTER_VERSION..=ADAPTER_VERSION)?;
        let sha = file_sha256(base)?;
        if sha != meta.base.sha256 {
            return Err(artifact(
                &dir.join(META_FILE),
                format!(
                    "trained on {} (sha256 {}), but the base model given is {} (sha256 {sha}); load it on the model it was trained on",
                    meta.base.file.display(),
                    meta.base.sha256,
                    base.display()
                ),
            ));
        }
        let w = dir.join(ADAPTER_FILE);
        let tensors = candle_core::safetensors::load(&w, &Device::Cpu)
            .map_err(|e| artifact(&w, format!("cannot read the adapter: {e}")))?;
        Ok(Adapter {
            weights_sha256: file_sha256(&w)?,
            meta,
            dir,
            tensors,
        })
    }

    /// The first 12 hex digits of the adapter weights' sha256 (in model ids and
    /// cache keys, so a fine-tuned model's answers never mix with its base's).
    pub fn short_id(&self) -> &str {
        &self.weights_sha256[..12]
    }

    /// The merged update `(alpha / rank) B A` `(out, in)` of the block `layer`'s
    /// weight `gguf_name` (`attn_q`, ...), if the adapter covers it.
    pub fn delta(&self, layer: usize, gguf_name: &str) -> Option<Result<Tensor>> {
        let t = Target::from_gguf_name(gguf_name)?;
        let a = self.tensors.get(&var_name(layer, t, "a"))?;
        let b = self.tensors.get(&var_name(layer, t, "b"))?;
        let scale = self.meta.lora.scale();
        Some(
            b.matmul(a)
                .and_then(|d| d * scale)
                .map_err(|e| artifact(&self.dir.join(ADAPTER_FILE), e.to_string())),
        )
    }
}

/// Writes `base` with `adapter` merged into it as a GGUF file `out`: every target
/// weight as f32 `W + (alpha / rank) B A`, every other tensor and all metadata as in
/// the base file. Written through a temp file and a rename.
pub fn export_merged_gguf(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    let adapter = Adapter::load(adapter, base)?;
    let mut gguf = GgufFile::open(base)?;
    let names: Vec<String> = gguf.content.tensor_infos.keys().cloned().collect();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let q = gguf.tensor(base, &name)?;
        let delta = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(layer, rest)| {
                let layer: usize = layer.parse().ok()?;
                let target = rest.strip_suffix(".weight")?;
                adapter.delta(layer, target)
            });
        let q = match delta {
            Some(d) => {
                let merged = (q.dequantize(&Device::Cpu).map_err(cerr)? + d?).map_err(cerr)?;
                QTensor::quantize(&merged, GgmlDType::F32).map_err(cerr)?
            }
            None => q,
        };
        tensors.push((name, q));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = gguf
        .content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let tmp = sibling(out, ".tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        gguf_file::write(&mut f, &metadata, &refs)
            .map_err(|e| artifact(&tmp, format!("cannot write GGUF: {e}")))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("lora", e)
}
