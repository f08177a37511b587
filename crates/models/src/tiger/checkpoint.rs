//! TIGER checkpoint folders: `weights.safetensors`, `semantic_ids.json` (the table the
//! network was trained on) and `checkpoint.json`; loading, provenance records, and
//! averaging the weights of checkpoints of one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use llmrec_core::{Dataset, Error, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::META_FILE;
use crate::checkpoint::{self, WEIGHTS_FILE, artifact};
use crate::learner::LoopState;
use crate::optim::AdamW;
use crate::parse_device;
use crate::semantic_ids::{IdScheme, SemanticIds};
use crate::tiger::{Tiger, TigerConfig, TigerModel, Vocab};

/// Version of the TIGER checkpoint format written and read by this build.
pub const CHECKPOINT_VERSION: u32 = 1;

/// The Semantic-ID table inside a checkpoint folder.
pub const IDS_FILE: &str = "semantic_ids.json";

/// The checkpoint JSON next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointMeta {
    pub(crate) format_version: u32,
    pub(crate) model: String,
    pub(crate) config: TigerConfig,
    pub(crate) vocab: Vocab,
    pub(crate) dataset_name: String,
    pub(crate) dataset_fingerprint: String,
    pub(crate) ids_scheme: IdScheme,
    pub(crate) epoch: usize,
    pub(crate) valid: BTreeMap<String, f64>,
    /// Where training stood after `epoch` (in `last/` checkpoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<LoopState>,
    /// The checkpoints whose weights were averaged into this one (see
    /// [`average_checkpoints`]); empty for a checkpoint written by training.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) averaged_from: Vec<AveragedFrom>,
}

/// One input of an averaged checkpoint ([`average_checkpoints`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AveragedFrom {
    /// The checkpoint folder read.
    pub checkpoint: PathBuf,
    /// Its training epoch.
    pub epoch: usize,
}

/// Loads a checkpoint folder written by [`crate::tiger::train`] (`best/`) for `dataset`.
///
/// Refuses other format versions, another dataset, and corrupt or mismatching files
/// with [`Error::Artifact`].
pub fn load_checkpoint(dir: &Path, dataset: &Dataset, device_name: &str) -> Result<Tiger> {
    let dir = &checkpoint::settled(dir);
    let dev = parse_device(device_name)?;
    let (meta, ids) = read_checkpoint(dir, dataset)?;
    let mpath = dir.join(META_FILE);
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = TigerModel::load(vb, &meta.config, &meta.vocab)
        .map_err(|e| artifact(&mpath, e.to_string()))?;
    let w = dir.join(WEIGHTS_FILE);
    varmap
        .load(&w)
        .map_err(|e| artifact(&w, format!("cannot load weights: {e}")))?;
    Tiger::new(model, &ids)
}

/// What a checkpoint folder holds, for result records: the folder read (after the
/// `.old` fallback), its epoch, network config, validation metrics and the provenance of
/// its Semantic-ID table ([`SemanticIds::provenance`]).
pub fn checkpoint_provenance(dir: &Path, dataset: &Dataset) -> Result<serde_json::Value> {
    let dir = checkpoint::settled(dir);
    let (meta, ids) = read_checkpoint(&dir, dataset)?;
    let mut about = provenance(&dir, meta.epoch, &meta.config, &meta.valid, &ids);
    if !meta.averaged_from.is_empty() {
        about["averaged_from"] = serde_json::json!(meta.averaged_from);
    }
    Ok(about)
}

/// Averages the weights of checkpoints of one network, element by element, into a new
/// checkpoint folder `out` that [`load_checkpoint`] and `tiger eval` read (checkpoint
/// averaging, as Vaswani et al. 2017 did with a run's last checkpoints). Every input
/// must belong to `dataset` and share the first one's network config and Semantic-ID
/// table, and there must be at least two. The result records its inputs in
/// `averaged_from`, takes the latest input's epoch, and has no validation metrics (it
/// was never validated: evaluate it with `eval.stage = "valid"` to choose among
/// averages). `out` is written through a temp folder and renames, and may not be one of
/// the inputs.
pub fn average_checkpoints(
    dirs: &[PathBuf],
    dataset: &Dataset,
    out: &Path,
) -> Result<Vec<AveragedFrom>> {
    if dirs.len() < 2 {
        return Err(Error::config(
            "--checkpoints",
            format!(
                "give at least two checkpoint folders to average, got {}",
                dirs.len()
            ),
        ));
    }
    // `out` as it resolves now (None while it does not exist), read once.
    let out_resolved = out.canonicalize().ok();
    let same = |a: &Path| out_resolved.is_some() && a.canonicalize().ok() == out_resolved;
    let mut first: Option<(CheckpointMeta, SemanticIds, PathBuf)> = None;
    let mut sum: Vec<(String, candle_core::Tensor)> = Vec::new();
    let mut from = Vec::with_capacity(dirs.len());
    for d in dirs {
        let dir = checkpoint::settled(d);
        if same(d) || same(&dir) {
            return Err(Error::config(
                "--out",
                format!(
                    "`{}` is one of the checkpoints being averaged; write the average elsewhere",
                    out.display()
                ),
            ));
        }
        let (meta, ids) = read_checkpoint(&dir, dataset)?;
        let w = dir.join(WEIGHTS_FILE);
        let mut weights = candle_core::safetensors::load(&w, &Device::Cpu)
            .map_err(|e| artifact(&w, format!("cannot load weights: {e}")))?;
        from.push(AveragedFrom {
            checkpoint: dir.clone(),
            epoch: meta.epoch,
        });
        let Some((m0, ids0, dir0)) = &first else {
            sum = weights.into_iter().collect();
            sum.sort_by(|a, b| a.0.cmp(&b.0));
            first = Some((meta, ids, dir));
            continue;
        };
        let differs = |file: &str, what: &str| {
            artifact(
                &dir.join(file),
                format!(
                    "the {what} differs from `{}`'s; only checkpoints of one network can be averaged",
                    dir0.display()
                ),
            )
        };
        if meta.config != m0.config {
            return Err(differs(META_FILE, "network configuration"));
        }
        if ids != *ids0 {
            return Err(differs(IDS_FILE, "Semantic-ID table"));
        }
        for (name, acc) in sum.iter_mut() {
            let t = weights
                .remove(name.as_str())
                .ok_or_else(|| artifact(&w, format!("no tensor `{name}`")))?;
            if t.dims() != acc.dims() {
                return Err(artifact(
                    &w,
                    format!(
                        "tensor `{name}` has shape {:?}, where `{}` has {:?}",
                        t.dims(),
                        dir0.display(),
                        acc.dims()
                    ),
                ));
            }
            *acc = (&*acc + &t).map_err(|e| artifact(&w, e.to_string()))?;
        }
        if let Some(name) = weights.keys().next() {
            return Err(artifact(
                &w,
                format!("tensor `{name}` is not in `{}`", dir0.display()),
            ));
        }
    }
    let Some((m0, ids0, _)) = first else {
        return Err(Error::Invalid("no checkpoints to average".into()));
    };
    let n = dirs.len() as f64;
    let mean = sum
        .into_iter()
        .map(|(name, t)| Ok((name, t.affine(1.0 / n, 0.0)?)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()
        .map_err(|e| Error::Invalid(format!("averaging weights: {e}")))?;
    let meta = CheckpointMeta {
        epoch: from.iter().map(|f| f.epoch).max().unwrap_or(0),
        valid: BTreeMap::new(),
        state: None,
        averaged_from: from.clone(),
        ..m0
    };
    checkpoint::write(out, &mean, &meta, None, |tmp| {
        ids0.save(&tmp.join(IDS_FILE))
    })?;
    Ok(from)
}

/// The result record of a network: its checkpoint folder, epoch, config, validation
/// metrics and the provenance of its Semantic-ID table.
pub fn provenance(
    checkpoint: &Path,
    epoch: usize,
    config: &TigerConfig,
    valid: &BTreeMap<String, f64>,
    ids: &SemanticIds,
) -> serde_json::Value {
    serde_json::json!({
        "checkpoint": checkpoint,
        "epoch": epoch,
        "config": config,
        "valid": valid,
        "semantic_ids": ids.provenance(),
    })
}

/// Reads and checks a checkpoint folder's metadata and Semantic-ID table for `dataset`.
pub(crate) fn read_checkpoint(
    dir: &Path,
    dataset: &Dataset,
) -> Result<(CheckpointMeta, SemanticIds)> {
    let meta: CheckpointMeta =
        checkpoint::read_meta(dir, "tiger", CHECKPOINT_VERSION..=CHECKPOINT_VERSION)?;
    let ids_path = dir.join(IDS_FILE);
    let ids = SemanticIds::load(&ids_path)?;
    ids.check_dataset(dataset, &ids_path)?;
    if Vocab::new(&ids, meta.config.user_buckets) != meta.vocab {
        return Err(artifact(
            &dir.join(META_FILE),
            "vocabulary does not match the Semantic-ID table",
        ));
    }
    Ok((meta, ids))
}

/// Writes a TIGER checkpoint folder: weights, Semantic-ID table, metadata, and the
/// optimizer's moments when given.
pub(crate) fn save(
    dir: &Path,
    varmap: &VarMap,
    meta: &CheckpointMeta,
    ids: &SemanticIds,
    optimizer: Option<&AdamW>,
) -> Result<()> {
    checkpoint::write(dir, &checkpoint::tensors(varmap)?, meta, optimizer, |tmp| {
        ids.save(&tmp.join(IDS_FILE))
    })
}
