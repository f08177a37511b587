//! TIGER training on the shared [`crate::learner`]: teacher-forced token
//! cross-entropy (optionally label-smoothed) over every prefix of every training
//! sequence, in length-bucketed seeded batches built by a loader thread; AdamW with
//! warm-up and inverse-square-root decay; validation by constrained beam search and
//! full ranking; `best/`, `last/` (with the AdamW moments, for exact resumption) and
//! kept epochs for averaging.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use candle_nn::{ParamsAdamW, VarMap};
use llmrec_core::eval::sample_cases;
use llmrec_core::io::write_json;
use llmrec_core::{
    Dataset, Error, EvalCase, EvalConfig, ItemId, Result, Rng, SequenceSplit, Stage, UserId, check,
    evaluate,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{OPTIMIZER_FILE, artifact, settled};
use crate::learner::{
    self, EpochRecord, EpochTotals, Resume, Schedule, Slot, TrainEvent, Trainee, Validation,
};
use crate::optim::AdamW;
use crate::parse_device;
use crate::semantic_ids::SemanticIds;
use crate::tiger::checkpoint::{self, CHECKPOINT_VERSION, CheckpointMeta, IDS_FILE};
use crate::tiger::{Tiger, TigerConfig, TigerModel, TrainBatch, Vocab, new_model};

/// Training settings. Defaults follow the paper where it says (model shape, batch 256,
/// lr 0.01 for 10k steps then inverse-square-root decay); a CPU configuration shrinks
/// `model` and `epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TigerTrainConfig {
    /// The network.
    pub model: TigerConfig,
    /// Passes over the training examples (every prefix of every training sequence).
    /// Default 50.
    pub epochs: usize,
    /// Examples per step. Default 256.
    pub batch_size: usize,
    /// Peak AdamW learning rate. Default 0.01.
    pub lr: f64,
    /// Steps at the peak rate; after that the rate decays as `1/sqrt(step)`. Default 10000.
    pub constant_steps: usize,
    /// Linear warm-up steps from 0 to `lr` (0: none). Default 0.
    pub warmup_steps: usize,
    /// AdamW weight decay. Default 0.
    pub weight_decay: f64,
    /// Label smoothing of the token cross-entropy, in `[0, 1)`: `eps / V` of the target
    /// mass is spread over the output vocabulary. Default 0 (the paper's plain loss).
    pub label_smoothing: f64,
    /// Seed for initialisation, order and dropout. Default 42.
    pub seed: u64,
    /// Validate every this many epochs. Default 1.
    pub eval_every: usize,
    /// Stop after this many validations without a better NDCG@10 (0: never). Default 5.
    pub patience: usize,
    /// Validate on at most this many users (seeded sample; 0: all). Default 0.
    pub valid_users: usize,
    /// Beams during validation and in the returned model. Default 30.
    pub beam_size: usize,
    /// Stop after the epoch in which this many seconds have passed (0: no limit). Default 0.
    pub max_seconds: f64,
    /// Device (`cpu`, `cuda`, `cuda:N`). Default `cpu`.
    pub device: String,
    /// Resume from this checkpoint folder: the `last/` folder that training writes after
    /// every epoch. Default none.
    pub resume_from: Option<PathBuf>,
    /// Keep the weights after every this many epochs in `epochs/epoch-NNN/`, checkpoint
    /// folders that `tiger eval` and [`average_checkpoints`] read (0: keep none).
    /// Default 0.
    pub keep_every: usize,
}

impl Default for TigerTrainConfig {
    fn default() -> Self {
        TigerTrainConfig {
            model: TigerConfig::default(),
            epochs: 50,
            batch_size: 256,
            lr: 0.01,
            constant_steps: 10_000,
            warmup_steps: 0,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            seed: 42,
            eval_every: 1,
            patience: 5,
            valid_users: 0,
            beam_size: 30,
            max_seconds: 0.0,
            device: "cpu".into(),
            resume_from: None,
            keep_every: 0,
        }
    }
}

impl TigerTrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.model.validate("train.model")?;
        check::all_positive([
            ("train.epochs", self.epochs),
            ("train.batch_size", self.batch_size),
            ("train.eval_every", self.eval_every),
            ("train.beam_size", self.beam_size),
        ])?;
        check::positive_real("train.lr", self.lr)?;
        check::non_negative("train.weight_decay", self.weight_decay)?;
        check::non_negative("train.max_seconds", self.max_seconds)?;
        check::unit_interval("train.label_smoothing", self.label_smoothing)
    }

    /// The learning rate at 1-based `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = if self.warmup_steps > 0 && step < self.warmup_steps {
            step as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let decay = if self.constant_steps > 0 && step > self.constant_steps {
            (self.constant_steps as f64 / step as f64).sqrt()
        } else if self.constant_steps == 0 {
            1.0 / (step.max(1) as f64).sqrt()
        } else {
            1.0
        };
        self.lr * warm * decay
    }
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TigerTrainReport {
    /// Every epoch.
    pub epochs: Vec<EpochRecord>,
    /// Epoch of the kept weights.
    pub best_epoch: usize,
    /// Validation metrics of the kept weights.
    pub best_valid: BTreeMap<String, f64>,
    /// Training examples per epoch.
    pub examples: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Wall time.
    pub seconds: f64,
    /// Why training stopped (`epochs`, `early stopping`, `time limit`).
    pub stopped: String,
}

/// A training example: user, index into the sequences, prefix length.
type Example = (UserId, u32);

/// Every `(user, t)` with `1 <= t < len(train sequence)`: predict `train[t]` from `train[..t]`.
fn examples(split: &SequenceSplit) -> Vec<Example> {
    split
        .users
        .iter()
        .enumerate()
        .flat_map(|(u, s)| (1..s.train.len()).map(move |t| (u as UserId, t as u32)))
        .collect()
}

/// Batches of examples of similar history length (less padding), in seeded order.
fn length_batches(
    ex: &[Example],
    max_history: usize,
    batch: usize,
    rng: &mut Rng,
) -> Vec<Vec<Example>> {
    let mut buckets: Vec<Vec<Example>> = vec![Vec::new(); max_history + 1];
    for &e in ex {
        buckets[(e.1 as usize).min(max_history)].push(e);
    }
    let mut out = Vec::new();
    for mut b in buckets {
        rng.shuffle(&mut b);
        out.extend(b.chunks(batch).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut out);
    out
}

/// TIGER as the learner trains it.
struct TigerTrainee<'a> {
    cfg: &'a TigerTrainConfig,
    dataset: &'a Dataset,
    ids: &'a SemanticIds,
    vocab: Vocab,
    model: TigerModel,
    varmap: VarMap,
    examples: Vec<Example>,
    seqs: Vec<&'a [ItemId]>,
    device: candle_core::Device,
    rec: Tiger,
    valid: Vec<EvalCase>,
    eval_cfg: EvalConfig,
}

impl TigerTrainee<'_> {
    fn meta(&self, epoch: usize, valid: &BTreeMap<String, f64>, slot: &Slot<'_>) -> CheckpointMeta {
        CheckpointMeta {
            format_version: CHECKPOINT_VERSION,
            model: "tiger".into(),
            config: self.cfg.model.clone(),
            vocab: self.vocab,
            dataset_name: self.dataset.name.clone(),
            dataset_fingerprint: self.dataset.fingerprint(),
            ids_scheme: self.ids.scheme,
            epoch,
            valid: valid.clone(),
            state: match slot {
                Slot::Last { state, .. } => Some((*state).clone()),
                Slot::Best | Slot::Kept => None,
            },
            averaged_from: Vec::new(),
        }
    }
}

impl Trainee for TigerTrainee<'_> {
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        opt: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        let cfg = self.cfg;
        let t0 = Instant::now();
        let mut rng = Rng::stream(cfg.seed, epoch as u64);
        let batches = length_batches(
            &self.examples,
            cfg.model.max_history,
            cfg.batch_size,
            &mut rng,
        );
        event(&TrainEvent::EpochStart {
            epoch,
            steps: batches.len(),
        });
        let mut totals = EpochTotals {
            loss_sum: 0.0,
            examples: 0,
        };
        let mut drop_rng = Rng::stream(cfg.seed ^ 0xD20B, epoch as u64);
        let model = &self.model;
        let vocab = self.vocab;
        // Data-loader thread: builds the next batches while this thread trains.
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = mpsc::sync_channel::<Result<(TrainBatch, usize)>>(4);
            let codes = &self.ids.codes;
            let dev2 = self.device.clone();
            let seqs = &self.seqs;
            let batches = &batches;
            let max_history = cfg.model.max_history;
            s.spawn(move || {
                for b in batches {
                    let rows: Vec<(Option<UserId>, &[ItemId], ItemId)> = b
                        .iter()
                        .map(|&(u, t)| {
                            let seq = seqs[u as usize];
                            (Some(u), &seq[..t as usize], seq[t as usize])
                        })
                        .collect();
                    let r = TrainBatch::new(&rows, codes, &vocab, max_history, &dev2)
                        .map(|tb| (tb, b.len()));
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            });
            for (i, r) in rx.into_iter().enumerate() {
                let (batch, n) = r?;
                *step += 1;
                opt.set_learning_rate(cfg.lr_at(*step));
                let loss = model
                    .loss_smoothed(&batch, Some(&mut drop_rng), cfg.label_smoothing)
                    .map_err(|e| Error::model("tiger", e))?;
                opt.backward_step(&loss)?;
                let l = loss
                    .to_scalar::<f32>()
                    .map_err(|e| Error::model("tiger", e))? as f64;
                if !l.is_finite() {
                    return Err(Error::model(
                        "tiger",
                        format!("loss is {l} at step {step}; lower the learning rate"),
                    ));
                }
                totals.loss_sum += l * n as f64;
                totals.examples += n;
                event(&TrainEvent::Step {
                    epoch,
                    step: i + 1,
                    loss: l,
                    examples_per_sec: totals.examples as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                });
            }
            Ok(())
        })?;
        Ok(totals)
    }

    fn validation_users(&self) -> usize {
        self.valid.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let report = evaluate(&self.rec, &self.valid, &self.eval_cfg, None, &|_| {})?;
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
            Slot::Best | Slot::Kept => None,
        };
        checkpoint::save(
            dir,
            &self.varmap,
            &self.meta(epoch, valid, &slot),
            self.ids,
            optimizer,
        )
    }
}

/// Trains TIGER on `split`'s training sequences with the Semantic IDs `ids`, validating
/// on the validation stage; returns the model with the best validation NDCG@10.
pub fn train(
    dataset: &Dataset,
    split: &SequenceSplit,
    ids: &SemanticIds,
    cfg: &TigerTrainConfig,
    run_dir: &Path,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<(Tiger, TigerTrainReport)> {
    cfg.validate()?;
    ids.validate()?;
    if ids.n_items() != split.n_items {
        return Err(Error::Invalid(format!(
            "Semantic-ID table has {} items, the split {}",
            ids.n_items(),
            split.n_items
        )));
    }
    let start = Instant::now();
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let dev = parse_device(&cfg.device)?;
    if !dev.is_cpu() {
        // Dropout masks are drawn on the device from its generator.
        dev.set_seed(cfg.seed)
            .map_err(|e| Error::model("tiger", e))?;
    }
    let vocab = Vocab::new(ids, cfg.model.user_buckets);
    let (model, mut varmap) = new_model(&cfg.model, &vocab, cfg.seed, &dev)?;
    let parameters: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        &varmap,
        ParamsAdamW {
            lr: cfg.lr_at(1),
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let ex = examples(split);
    if ex.is_empty() {
        return Err(Error::Invalid(
            "no training examples (sequences of length >= 2)".into(),
        ));
    }
    let valid = sample_cases(split.cases(Stage::Valid), cfg.valid_users, cfg.seed);
    let eval_cfg = EvalConfig {
        ks: vec![1, 5, 10, 20],
        batch_size: 256,
        ..Default::default()
    };
    let mut rec = Tiger::new(model.clone(), ids)?;
    rec.beam_size = cfg.beam_size;
    rec.exclude_history = eval_cfg.exclude_history;
    let resume = match &cfg.resume_from {
        Some(from) => Some(resume(
            from,
            run_dir,
            dataset,
            ids,
            cfg,
            &mut varmap,
            &mut opt,
        )?),
        None => None,
    };
    write_json(&run_dir.join("train_config.json"), cfg)?;
    let n_examples = ex.len();
    let mut trainee = TigerTrainee {
        cfg,
        dataset,
        ids,
        vocab,
        model,
        varmap,
        examples: ex,
        seqs: split.users.iter().map(|u| u.train.as_slice()).collect(),
        device: dev,
        rec,
        valid,
        eval_cfg,
    };
    let schedule = Schedule {
        epochs: cfg.epochs,
        eval_every: cfg.eval_every,
        patience: cfg.patience,
        max_seconds: cfg.max_seconds,
        keep_every: cfg.keep_every,
        monitor: learner::Monitor::ndcg10(),
    };
    let out = learner::fit(
        run_dir,
        "TIGER",
        &schedule,
        &mut trainee,
        &mut opt,
        resume,
        event,
    )?;
    let best_dir = run_dir.join("best");
    let mut tiger = checkpoint::load_checkpoint(&settled(&best_dir), dataset, &cfg.device)?;
    tiger.beam_size = cfg.beam_size;
    let report = TigerTrainReport {
        epochs: out.records,
        best_epoch: out.best_epoch,
        best_valid: out.best_valid,
        examples: n_examples,
        parameters,
        seconds: start.elapsed().as_secs_f64(),
        stopped: out.stop.label().to_string(),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok((tiger, report))
}

/// Loads the weights and optimizer state of the `last/` checkpoint `from` into `varmap`
/// and `opt`, after checking that it belongs to this dataset, Semantic-ID table and
/// model configuration; returns where the learner picks up.
fn resume(
    from: &Path,
    run_dir: &Path,
    dataset: &Dataset,
    ids: &SemanticIds,
    cfg: &TigerTrainConfig,
    varmap: &mut VarMap,
    opt: &mut AdamW,
) -> Result<Resume> {
    let dir = &settled(from);
    let (meta, saved_ids) = checkpoint::read_checkpoint(dir, dataset)?;
    let mpath = dir.join(crate::checkpoint::META_FILE);
    let Some(state) = meta.state else {
        return Err(artifact(
            &mpath,
            "no training state: resume from a run's `last/` folder, not `best/`",
        ));
    };
    if meta.config != cfg.model {
        return Err(artifact(
            &mpath,
            "the model configuration differs from the training config's; cannot resume",
        ));
    }
    if saved_ids != *ids {
        return Err(artifact(
            &dir.join(IDS_FILE),
            "the Semantic-ID table differs from the one training was given; cannot resume",
        ));
    }
    let w = dir.join(crate::checkpoint::WEIGHTS_FILE);
    varmap
        .load(&w)
        .map_err(|e| artifact(&w, format!("cannot load weights: {e}")))?;
    opt.load(&dir.join(OPTIMIZER_FILE), state.step)?;
    // The earlier records and best weights are this run folder's only if `from` is its
    // `last/`; resumed elsewhere, the run starts new records and a new best.
    let own = learner::is_own(from, run_dir);
    Ok(Resume {
        epoch: meta.epoch,
        state,
        own,
    })
}
