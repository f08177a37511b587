//! PALR's retriever: a SASRec checkpoint given by the user, or the dataset's default one
//! (`artifacts/<dataset>/palr-sasrec/`), trained first when it does not exist yet.

use std::path::{Path, PathBuf};

use llmrec_core::{Dataset, Result, SequenceSplit};
use llmrec_models::{Loss, SasRec, SasRecTrainConfig, TrainEvent};
use serde::{Deserialize, Serialize};

use super::Domain;

/// Where the retriever comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrieverConfig {
    /// SASRec checkpoint folder. Unset: `artifacts/<dataset>/palr-sasrec/best`,
    /// trained first (with the settings below) if it does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// Training epochs when a retriever must be trained.
    pub epochs: usize,
    /// Loss when a retriever must be trained.
    pub loss: Loss,
    /// Use SASRec's sparse-data shape (max_len 50, dropout 0.5) for datasets
    /// that are not MovieLens; MovieLens keeps 200 and 0.2.
    pub auto_shape: bool,
    /// Seed of retriever training.
    pub seed: u64,
}

impl Default for RetrieverConfig {
    fn default() -> Self {
        RetrieverConfig {
            checkpoint: None,
            epochs: 20,
            loss: Loss::Ce,
            auto_shape: true,
            seed: 42,
        }
    }
}

/// The default retriever folder of a dataset, under `root` (the CLI uses
/// `artifacts/`).
pub fn default_dir(root: &Path, dataset: &str) -> PathBuf {
    root.join(dataset).join("palr-sasrec")
}

/// What [`load_or_train`] will do.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Load this checkpoint.
    Checkpoint(PathBuf),
    /// Train SASRec with these settings into this folder, then load its `best/`.
    Train(Box<SasRecTrainConfig>, PathBuf),
}

/// Decides where the retriever comes from: `cfg.checkpoint`, else the `best/` of
/// `default`, else a SASRec trained into `default` with `cfg`'s settings (sparse-data
/// shape for datasets other than MovieLens when `cfg.auto_shape`).
pub fn source(cfg: &RetrieverConfig, ds: &Dataset, default: &Path) -> Result<Source> {
    if let Some(c) = &cfg.checkpoint {
        return Ok(Source::Checkpoint(c.clone()));
    }
    let best = llmrec_models::checkpoint::settled(&default.join("best"));
    if best.join(llmrec_models::checkpoint::META_FILE).exists() {
        return Ok(Source::Checkpoint(best));
    }
    let mut train = SasRecTrainConfig {
        loss: cfg.loss,
        epochs: cfg.epochs,
        seed: cfg.seed,
        ..Default::default()
    };
    let movielens = Domain::of(ds).noun == "movie";
    if cfg.auto_shape && !movielens {
        train.model.max_len = 50;
        train.model.dropout = 0.5;
    }
    train.validate(ds.n_items())?;
    Ok(Source::Train(Box::new(train), default.to_path_buf()))
}

/// Loads or trains the retriever as `source` says. Training goes into a scratch
/// folder that replaces the target whole, so a killed run never leaves a half-written
/// retriever behind.
pub fn load_or_train(
    source: &Source,
    ds: &Dataset,
    split: &SequenceSplit,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<SasRec> {
    match source {
        Source::Checkpoint(c) => llmrec_models::load_checkpoint(c, ds),
        Source::Train(train, dir) => {
            llmrec_core::io::write_dir(dir, |tmp| {
                llmrec_models::train(ds, split, train, tmp, event).map(|_| ())
            })?;
            llmrec_models::load_checkpoint(&dir.join("best"), ds)
        }
    }
}
