//! The TIGER pipeline: item embeddings → Semantic IDs → seq2seq training → choice on
//! validation → evaluation. The network, its training and its checkpoints live in
//! [`llmrec_models::tiger`]; this module composes them.
//!
//! 1. [`semantic_ids`]: RQ-VAE (or RQ-KMeans, or the random / LSH baselines) over the
//!    item text embeddings of **every** catalogue item, so items never seen in training
//!    still get an ID from their text (cold start), optionally fused with collaborative
//!    vectors of the training graph. Writes `semantic_ids.json` (the versioned artifact),
//!    `rqvae_metrics.jsonl`, `rqvae.svg`, `rqvae_report.json` and the RQ-VAE weights
//!    `rqvae.safetensors` with the input standardisation in
//!    `rqvae_standardization.json`.
//! 2. [`train`] (from [`llmrec_models::tiger`], on the shared
//!    [`llmrec_models::learner`]): teacher-forced training on every prefix of the
//!    training sequences, validation by constrained beam search, early stopping,
//!    `best/`, `last/` (exact resumption) and kept epochs.
//! 3. [`select`]: the model to test, chosen on validation among `best/` and averages of
//!    the last kept epochs.
//! 4. [`eval`]: full-ranking evaluation of the leave-one-out split with the core
//!    evaluator, the invalid-ID rate with constraints on (must be 0) and off (a
//!    diagnostic), and metrics by how often the target occurs in training (cold start).
//!
//! Every file is written through a temp file and a rename.

use std::path::{Path, PathBuf};

use llmrec_core::{Error, Result};
use llmrec_models::semantic_ids::IdScheme;
pub use llmrec_models::tiger::{
    AveragedFrom, CHECKPOINT_VERSION, Tiger, TigerTrainConfig, TigerTrainReport,
    average_checkpoints, checkpoint_provenance, load_checkpoint, provenance, train,
};
pub use llmrec_models::{EpochRecord, TrainEvent};
use serde::{Deserialize, Serialize};

mod eval;
mod ids;
mod select;

pub use eval::{Bucket, EvalOptions, TigerEval, eval};
pub use ids::{CollabConfig, IdsConfig, IdsOutput, semantic_ids};
pub use select::{Candidate, SelectConfig, Selection, select};

fn jsonl<T: Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        out.extend(serde_json::to_vec(r).map_err(|e| Error::Invalid(format!("json: {e}")))?);
        out.push(b'\n');
    }
    Ok(out)
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// All settings of a TIGER run (IDs, training, evaluation), e.g. one JSON file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TigerRunConfig {
    /// Semantic-ID step.
    pub ids: IdsConfig,
    /// Training step.
    pub train: TigerTrainConfig,
    /// Evaluation step.
    pub eval: EvalOptions,
    /// How the evaluated model is chosen on validation after training.
    pub select: SelectConfig,
}

/// The standard run-folder layout under `root` for a dataset and ID scheme:
/// `root/<dataset>/<scheme>/`.
pub fn run_folder(root: &Path, dataset: &str, scheme: IdScheme) -> PathBuf {
    root.join(dataset).join(scheme.label())
}
