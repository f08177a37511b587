//! Step 3: the model to test, chosen on validation among `best/` and averages of the
//! last kept epochs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmrec_core::io::write_json;
use llmrec_core::{Dataset, Error, Result, SequenceSplit, Stage};
use serde::{Deserialize, Serialize};

use super::*;

/// How the model that is tested is chosen, on validation only, after training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    /// Candidate averages: for each `N` here, the element-wise mean of the last `N`
    /// epochs kept by `train.keep_every`, up to the final epoch. The candidates and the
    /// best validated epoch (`best/`) are all evaluated on the validation stage with the
    /// `eval` settings; the one with the highest validation NDCG@10 is tested (a tie goes
    /// to the earlier candidate: `best/`, then the averages in this order). Empty (the
    /// default): `best/` is tested without a selection step.
    pub average_last: Vec<usize>,
}

impl SelectConfig {
    /// Checks the values.
    pub fn validate(&self, train: &TigerTrainConfig) -> Result<()> {
        if self.average_last.is_empty() {
            return Ok(());
        }
        if self.average_last.iter().any(|&n| n < 2) {
            return Err(Error::config(
                "select.average_last",
                "each window must average at least 2 epochs",
            ));
        }
        if train.keep_every == 0 {
            return Err(Error::config(
                "select.average_last",
                "averages need kept epochs: set train.keep_every (e.g. 1)",
            ));
        }
        Ok(())
    }
}

/// One model the selection step evaluated on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `best` or `mean of last N`.
    pub name: String,
    /// Its checkpoint folder.
    pub checkpoint: PathBuf,
    /// The training epochs behind it.
    pub epochs: Vec<usize>,
    /// Validation metrics (full ranking, the `eval` settings on the validation stage).
    pub valid: BTreeMap<String, f64>,
}

/// What the selection step chose, and from what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The metric compared (validation NDCG@10).
    pub metric: String,
    /// Every candidate with its validation metrics.
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate.
    pub chosen: usize,
}

impl Selection {
    /// The chosen candidate.
    pub fn chosen(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }
}

/// The epochs kept under `train_dir/epochs/` (`epoch-NNN`), ascending.
fn kept_epochs(train_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = train_dir.join("epochs");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        out.push((epoch, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Chooses the model to test on validation, as `cfg.select` says: evaluates `best/`
/// and each average of the last kept epochs of the run in `train_dir` on the validation
/// stage, and writes the averages (`train_dir/mean-last-N/`) and `selection.json`. The
/// test stage is not read here.
pub fn select(
    dataset: &Dataset,
    split: &SequenceSplit,
    cfg: &TigerRunConfig,
    train_dir: &Path,
    progress: &(dyn Fn(&str, usize) + Sync),
) -> Result<Selection> {
    cfg.select.validate(&cfg.train)?;
    // Only epochs of this run up to its `last/` count: leftovers of an earlier, longer
    // run in the same folder do not.
    let last_epoch = llmrec_models::checkpoint::checkpoint_epoch(&train_dir.join("last"))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "select: no readable `last/` checkpoint in {}; train first",
                train_dir.display()
            ))
        })?;
    let mut kept = kept_epochs(train_dir)?;
    kept.retain(|k| k.0 <= last_epoch);
    let best_dir = llmrec_models::checkpoint::settled(&train_dir.join("best"));
    // Read (and checked against the dataset) like any checkpoint.
    let best_epoch = checkpoint_provenance(&best_dir, dataset)?["epoch"]
        .as_u64()
        .unwrap_or(0) as usize;
    let mut candidates = vec![("best".to_string(), best_dir, vec![best_epoch])];
    for &n in &cfg.select.average_last {
        if kept.len() < n {
            return Err(Error::Invalid(format!(
                "select.average_last: {n} epochs to average, but {} kept {} (up to epoch {last_epoch})",
                train_dir.join("epochs").display(),
                kept.len()
            )));
        }
        let window = &kept[kept.len() - n..];
        // The window must be the last `n` kept epochs with no gap, ending at `last/`.
        let step = cfg.train.keep_every;
        let expected: Vec<usize> = (0..n)
            .filter_map(|i| (last_epoch / step).checked_sub(n - 1 - i).map(|m| m * step))
            .collect();
        let found: Vec<usize> = window.iter().map(|k| k.0).collect();
        if found != expected {
            return Err(Error::Invalid(format!(
                "select.average_last: the last {n} kept epochs in {} are {found:?}, expected {expected:?} (every {step} up to epoch {last_epoch}); a kept epoch is missing",
                train_dir.join("epochs").display()
            )));
        }
        let out = train_dir.join(format!("mean-last-{n}"));
        let dirs: Vec<PathBuf> = window.iter().map(|k| k.1.clone()).collect();
        average_checkpoints(&dirs, dataset, &out)?;
        candidates.push((
            format!("mean of last {n}"),
            out,
            window.iter().map(|k| k.0).collect(),
        ));
    }
    let opts = EvalOptions {
        stage: Stage::Valid,
        ..cfg.eval.clone()
    };
    let metric = "NDCG@10".to_string();
    let mut scored = Vec::with_capacity(candidates.len());
    for (name, checkpoint, epochs) in candidates {
        let model = load_checkpoint(&checkpoint, dataset, &cfg.train.device)?;
        let ev = eval(&model, split, &opts, None, &|n| progress(&name, n))?;
        scored.push(Candidate {
            name,
            checkpoint,
            epochs,
            valid: ev.report.metrics,
        });
    }
    let score = |c: &Candidate| c.valid.get(&metric).copied().unwrap_or(f64::NEG_INFINITY);
    let mut chosen = 0;
    for (i, c) in scored.iter().enumerate() {
        if score(c) > score(&scored[chosen]) {
            chosen = i;
        }
    }
    let selection = Selection {
        metric,
        candidates: scored,
        chosen,
    };
    write_json(&train_dir.join("selection.json"), &selection)?;
    Ok(selection)
}
