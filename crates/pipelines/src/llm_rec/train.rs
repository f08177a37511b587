//! Training of the content MLP through the shared learner: every training
//! interaction a positive with `negatives` seeded uniform negatives (items the user
//! never had in training), binary cross-entropy, AdamW with a cosine schedule,
//! validation NDCG@10 (full ranking) every pass for `best/` and early stopping, and
//! the kept weights scored once on test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::check::{all_positive, non_negative, positive_real};
use llmrec_core::{
    Error, EvalCase, EvalConfig, EvalReport, ItemId, Result, Rng, SequenceSplit, Stage, evaluate,
};
use llmrec_models::checkpoint;
use llmrec_models::content_mlp::{ContentMlp, ContentMlpConfig};
use llmrec_models::ctr::bce_with_logits;
use llmrec_models::init::seeded;
use llmrec_models::learner::{
    EpochMeter, EpochTotals, Monitor, Schedule, Slot, TrainEvent, Trainee, Validation, fit,
};
use llmrec_models::optim::{AdamW, cosine_decay};
use serde::{Deserialize, Serialize};

fn merr(e: candle_core::Error) -> Error {
    Error::model("llm-rec mlp", e)
}

/// Training settings of the content MLP (documented in `configs/llm_rec.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpTrainConfig {
    /// Peak AdamW learning rate (cosine decay to 0 over `epochs`). Default 0.001.
    pub lr: f64,
    /// AdamW weight decay. Default 0.0.
    pub weight_decay: f64,
    /// Positives per step. Default 2048.
    pub batch: usize,
    /// Sampled negatives per positive. Default 4.
    pub negatives: usize,
    /// At most this many passes over the training interactions. Default 30.
    pub epochs: usize,
    /// Passes without a better validation NDCG@10 before stopping. Default 3.
    pub patience: usize,
}

impl Default for MlpTrainConfig {
    fn default() -> Self {
        MlpTrainConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            batch: 2048,
            negatives: 4,
            epochs: 30,
            patience: 3,
        }
    }
}

impl MlpTrainConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        positive_real("train.lr", self.lr)?;
        non_negative("train.weight_decay", self.weight_decay)?;
        all_positive([
            ("train.batch", self.batch),
            ("train.negatives", self.negatives),
            ("train.epochs", self.epochs),
            ("train.patience", self.patience),
        ])
    }
}

/// What training one model gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainedMlp {
    /// The pass kept (best validation NDCG@10).
    pub best_epoch: usize,
    /// Passes run.
    pub epochs_run: usize,
    /// Validation metrics of the kept pass.
    pub valid: BTreeMap<String, f64>,
    /// Test report of the kept pass (read once, after the choice).
    pub test: EvalReport,
    /// Seconds of training.
    pub train_seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct MlpMeta {
    format_version: u32,
    model: String,
    row: String,
    seed: u64,
    epoch: usize,
    valid: BTreeMap<String, f64>,
}

struct MlpTrainee<'a> {
    model: ContentMlp,
    varmap: VarMap,
    /// `(user, item)` of every training interaction, in user and time order.
    pairs: Vec<(u32, ItemId)>,
    /// Each user's training items, sorted (for rejecting negatives).
    seen: Vec<Vec<ItemId>>,
    n_items: usize,
    valid: &'a [EvalCase],
    eval: &'a EvalConfig,
    cfg: &'a MlpTrainConfig,
    row: &'a str,
    seed: u64,
    total_steps: usize,
}

impl MlpTrainee<'_> {
    fn negative(&self, rng: &mut Rng, user: u32) -> ItemId {
        let seen = &self.seen[user as usize];
        // A user who has every item gets any item (never the case on real data).
        for _ in 0..64 {
            let j = rng.index(self.n_items) as ItemId;
            if seen.binary_search(&j).is_err() {
                return j;
            }
        }
        rng.index(self.n_items) as ItemId
    }
}

impl Trainee for MlpTrainee<'_> {
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        optimizer: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        let mut rng = Rng::stream(self.seed, 0x4c52_0000 + epoch as u64);
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        rng.shuffle(&mut order);
        let steps = order.len().div_ceil(self.cfg.batch);
        let mut meter = EpochMeter::start(epoch, steps, event);
        let m = 1 + self.cfg.negatives;
        let dev = Device::Cpu;
        let mut labels = Vec::new();
        for (k, chunk) in order.chunks(self.cfg.batch).enumerate() {
            optimizer.set_learning_rate(cosine_decay(self.cfg.lr, *step, self.total_steps));
            let b = chunk.len();
            let mut users = Vec::with_capacity(b);
            let mut items = Vec::with_capacity(b * m);
            for &p in chunk {
                let (u, i) = self.pairs[p];
                users.push(u);
                items.push(i);
                for _ in 0..self.cfg.negatives {
                    items.push(self.negative(&mut rng, u));
                }
            }
            if labels.len() != b * m {
                labels = (0..b * m)
                    .map(|x| if x % m == 0 { 1f32 } else { 0.0 })
                    .collect();
            }
            let run = || -> candle_core::Result<(Tensor, Tensor, Tensor)> {
                Ok((
                    Tensor::new(users.as_slice(), &dev)?,
                    Tensor::from_vec(items.clone(), (b, m), &dev)?,
                    Tensor::from_vec(labels.clone(), b * m, &dev)?,
                ))
            };
            let (u_t, i_t, y_t) = run().map_err(merr)?;
            let all = self.model.item_vectors()?;
            let logits = self
                .model
                .logits(&all, &u_t, &i_t)?
                .flatten_all()
                .map_err(merr)?;
            let loss = bce_with_logits(&logits, &y_t)?;
            let value = loss.to_scalar::<f32>().map_err(merr)? as f64;
            meter.check("llm-rec mlp", k + 1, value)?;
            optimizer.backward_step(&loss)?;
            *step += 1;
            meter.record(k + 1, value, b, event);
        }
        Ok(meter.totals())
    }

    fn validation_users(&self) -> usize {
        self.valid.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let scorer = self.model.freeze(self.row)?;
        let report = evaluate(&scorer, self.valid, self.eval, None, &|_| {})?;
        Ok(Validation {
            metrics: report.metrics,
        })
    }

    fn save(
        &self,
        dir: &Path,
        slot: Slot<'_>,
        epoch: usize,
        valid: &BTreeMap<String, f64>,
    ) -> Result<()> {
        let optimizer = match slot {
            Slot::Last { optimizer, .. } => Some(optimizer),
            _ => None,
        };
        let meta = MlpMeta {
            format_version: 1,
            model: "llm-rec-mlp".into(),
            row: self.row.to_string(),
            seed: self.seed,
            epoch,
            valid: valid.clone(),
        };
        checkpoint::write(
            dir,
            &checkpoint::tensors(&self.varmap)?,
            &meta,
            optimizer,
            |_| Ok(()),
        )
    }
}

/// Inputs of [`train_mlp`].
pub struct MlpRun<'a> {
    /// The model's shape.
    pub model: &'a ContentMlpConfig,
    /// Training settings.
    pub train: &'a MlpTrainConfig,
    /// The evaluator's settings (full ranking by default).
    pub eval: &'a EvalConfig,
    /// Item features, row-major `(n_items, width)`.
    pub features: &'a [f32],
    /// Their width.
    pub width: usize,
    /// Name of the table row (for the checkpoint and plots).
    pub row: &'a str,
    /// Seed of the weights, the order and the negatives.
    pub seed: u64,
}

/// Trains one content MLP on `split`'s training part into `run_dir` (validation
/// NDCG@10 picks the pass), then scores the kept weights once on test.
pub fn train_mlp(
    run: &MlpRun<'_>,
    split: &SequenceSplit,
    run_dir: &Path,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainedMlp> {
    let cfg = run.train;
    cfg.validate()?;
    let n_items = split.n_items;
    if run.width == 0 || run.features.len() != n_items * run.width {
        return Err(Error::Invalid(format!(
            "{} feature values for {n_items} items of width {}",
            run.features.len(),
            run.width
        )));
    }
    let pairs: Vec<(u32, ItemId)> = split
        .users
        .iter()
        .enumerate()
        .flat_map(|(u, s)| s.train.iter().map(move |&i| (u as u32, i)))
        .collect();
    let seen: Vec<Vec<ItemId>> = split
        .users
        .iter()
        .map(|s| {
            let mut v = s.train.clone();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let features =
        llmrec_models::content_mlp::feature_table(run.features.to_vec(), n_items, run.width)?;
    let model = ContentMlp::new(vb, run.model, split.users.len(), features)?;
    seeded(&varmap, run.seed)?;
    let mut opt = AdamW::new(
        &varmap,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let valid = split.cases(Stage::Valid);
    let total_steps = cfg.epochs * pairs.len().div_ceil(cfg.batch);
    let mut trainee = MlpTrainee {
        model,
        varmap,
        pairs,
        seen,
        n_items,
        valid: &valid,
        eval: run.eval,
        cfg,
        row: run.row,
        seed: run.seed,
        total_steps,
    };
    let schedule = Schedule {
        epochs: cfg.epochs,
        eval_every: 1,
        patience: cfg.patience,
        max_seconds: 0.0,
        keep_every: 0,
        monitor: Monitor::ndcg10(),
    };
    let t0 = Instant::now();
    let outcome = fit(
        run_dir,
        &format!("content MLP ({})", run.row),
        &schedule,
        &mut trainee,
        &mut opt,
        None,
        event,
    )?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let weights = checkpoint::settled(&run_dir.join("best")).join(checkpoint::WEIGHTS_FILE);
    trainee
        .varmap
        .load(&weights)
        .map_err(|e| checkpoint::artifact(&weights, format!("cannot read weights: {e}")))?;
    let scorer = trainee.model.freeze(run.row)?;
    let test = evaluate(&scorer, &split.cases(Stage::Test), run.eval, None, &|_| {})?;
    Ok(TrainedMlp {
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.last_epoch,
        valid: outcome.best_valid,
        test,
        train_seconds,
    })
}
