//! SASRec training on the shared [`crate::learner`]: seeded sampling, AdamW,
//! periodic full-ranking validation, early stopping on validation NDCG@10,
//! checkpoints, `metrics.jsonl` and its plots.
//!
//! # Run folder
//!
//! `train` writes into `run_dir` (every file through a temp file and a rename):
//! `train_config.json` (the [`SasRecTrainConfig`]), `report.json` (the [`SasRecTrainReport`]),
//! and the learner's files: `metrics.jsonl`, `loss.svg`, `valid.svg`, `best/` and
//! `last/` (see [`crate::learner`]).
//!
//! # Checkpoints
//!
//! A checkpoint folder holds `weights.safetensors` and `checkpoint.json` (format
//! version [`CHECKPOINT_VERSION`], model config, loss, dataset name and fingerprint, the
//! raw item ids in dense order, the epoch and its validation metrics); `last/` adds the
//! AdamW moments and the loop state.
//!
//! # Resuming
//!
//! With `resume_from` set to a run's `last/` folder, training continues at the next
//! epoch from its weights, AdamW moments, step count and early-stopping state.
//! Sampling is seeded per epoch (`Rng::stream(seed, epoch)`), so a run resumed into its
//! own folder ends bit for bit where an uninterrupted run would on the CPU (on a GPU
//! the dropout masks come from the device generator, which is reseeded, not restored).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::io::write_json;
use llmrec_core::{
    Dataset, Error, EvalCase, EvalConfig, ItemId, Result, Rng, SequenceSplit, Stage, check,
    evaluate,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, OPTIMIZER_FILE, WEIGHTS_FILE, artifact};
use crate::learner::{
    self, EpochTotals, LoopState, Resume, Schedule, Slot, Stop, TrainEvent, Trainee, Validation,
};
use crate::loss::{self, Loss};
use crate::optim::AdamW;
use crate::parse_device;
use crate::sasrec::model::{self as sasrec, SasRec, SasRecConfig, SasRecModel, SeqBatch};

/// Version of the checkpoint format written by this build. Version 1 (before the
/// shared learner: no optimizer state) is still read; others are refused.
pub const CHECKPOINT_VERSION: u32 = 2;
/// The oldest checkpoint format this build reads.
const OLDEST_VERSION: u32 = 1;

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SasRecTrainConfig {
    /// The network.
    pub model: SasRecConfig,
    /// The loss. Default: full cross-entropy.
    pub loss: Loss,
    /// AdamW learning rate. Default 0.001 (the paper's).
    pub lr: f64,
    /// AdamW second-moment decay. Default 0.98 (the original code's).
    pub beta2: f64,
    /// Decoupled weight decay. Default 0 (plain Adam, as in the original).
    pub weight_decay: f64,
    /// Sequences (users) per step. Default 128.
    pub batch_size: usize,
    /// Maximum number of epochs (one pass over every user with >= 2 training items). Default 200.
    pub epochs: usize,
    /// Evaluate on the validation split every this many epochs (and after the last). Default 5.
    pub eval_every: usize,
    /// Stop after this many evaluations without a better validation NDCG@10. Default 5.
    pub patience: usize,
    /// Seed of every random draw (initialisation, order, negatives, dropout). Default 42.
    pub seed: u64,
    /// Threads of the rayon pool that runs training and evaluation (matrix products and
    /// our fused kernels); 0 = rayon's default (all cores). Default 0. candle's own
    /// element-wise pool is sized once per process from `CANDLE_NUM_THREADS` (else
    /// `RAYON_NUM_THREADS`); on 2 cores `CANDLE_NUM_THREADS=1` is faster, because that
    /// pool spin-waits.
    pub threads: usize,
    /// Device: `cpu`, `cuda` or `cuda:N` (CUDA needs the `cuda` feature). Default `cpu`.
    pub device: String,
    /// Users scored per batch during validation. Default 256.
    pub eval_batch_size: usize,
    /// Checkpoint folder to resume from. Default none.
    pub resume_from: Option<PathBuf>,
}

impl Default for SasRecTrainConfig {
    fn default() -> Self {
        SasRecTrainConfig {
            model: SasRecConfig::default(),
            loss: Loss::default(),
            lr: 1e-3,
            beta2: 0.98,
            weight_decay: 0.0,
            batch_size: 128,
            epochs: 200,
            eval_every: 5,
            patience: 5,
            seed: 42,
            threads: 0,
            device: "cpu".into(),
            eval_batch_size: 256,
            resume_from: None,
        }
    }
}

impl SasRecTrainConfig {
    /// Checks the settings for a dataset of `n_items` items.
    pub fn validate(&self, n_items: usize) -> Result<()> {
        self.model.validate("model")?;
        self.loss.validate(n_items)?;
        check::positive_real("lr", self.lr)?;
        check::unit_interval("beta2", self.beta2)?;
        check::non_negative("weight_decay", self.weight_decay)?;
        check::all_positive([
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("eval_every", self.eval_every),
            ("patience", self.patience),
            ("eval_batch_size", self.eval_batch_size),
        ])?;
        parse_device(&self.device)?;
        Ok(())
    }
}

/// What a training run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SasRecTrainReport {
    /// Last epoch run.
    pub last_epoch: usize,
    /// Epoch of the best validation NDCG@10 (0 if never evaluated).
    pub best_epoch: usize,
    /// Validation metrics of the best checkpoint.
    pub best_valid: BTreeMap<String, f64>,
    /// Why training stopped.
    pub stopped: Stop,
    /// Mean wall time of an epoch's training steps.
    pub mean_epoch_seconds: f64,
    /// Total wall time.
    pub seconds: f64,
    /// Folder of the best checkpoint.
    pub best_checkpoint: PathBuf,
    /// Folder of the last checkpoint.
    pub last_checkpoint: PathBuf,
}

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    format_version: u32,
    model: String,
    config: SasRecConfig,
    loss: Loss,
    dataset_name: String,
    dataset_fingerprint: String,
    n_items: usize,
    item_ids: Vec<String>,
    epoch: usize,
    /// Validation metrics of this epoch (empty when it was not validated).
    #[serde(default)]
    valid: BTreeMap<String, f64>,
    /// The loop's state (in `last/` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<LoopState>,
}

fn model_err(e: candle_core::Error) -> Error {
    Error::model("sasrec", e)
}

/// Reads and checks a checkpoint's JSON against `dataset`.
fn read_meta(dir: &Path, dataset: &Dataset) -> Result<CheckpointMeta> {
    let path = dir.join(checkpoint::META_FILE);
    let meta: CheckpointMeta =
        checkpoint::read_meta(dir, "sasrec", OLDEST_VERSION..=CHECKPOINT_VERSION)?;
    checkpoint::check_dataset(
        &path,
        &meta.dataset_name,
        &meta.dataset_fingerprint,
        dataset,
    )?;
    if meta.n_items != dataset.n_items() || meta.item_ids.as_slice() != dataset.items.raw_ids() {
        return Err(artifact(&path, "item id map differs from the dataset's"));
    }
    meta.config
        .validate("config")
        .map_err(|e| artifact(&path, e.to_string()))?;
    Ok(meta)
}

/// Reads a checkpoint's weights, checking every name and shape.
fn read_weights(
    dir: &Path,
    meta: &CheckpointMeta,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| artifact(&path, format!("corrupt weights file: {e}")))?;
    let shapes = sasrec::parameter_shapes(&meta.config, meta.n_items);
    if tensors.len() != shapes.len() {
        return Err(artifact(
            &path,
            format!("{} tensors, expected {}", tensors.len(), shapes.len()),
        ));
    }
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| artifact(&path, format!("tensor `{name}` is missing")))?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                return Err(artifact(
                    &path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                        t.dtype(),
                        t.dims()
                    ),
                ));
            }
            Ok((name, t))
        })
        .collect()
}

/// Loads the checkpoint in `dir` for scoring `dataset` on the CPU.
///
/// Refuses (with [`Error::Artifact`]) a checkpoint of another format version, one made
/// on another dataset (fingerprint or item ids differ), and corrupt or incomplete files.
pub fn load_checkpoint(dir: &Path, dataset: &Dataset) -> Result<SasRec> {
    load_checkpoint_on(dir, dataset, "cpu")
}

/// [`load_checkpoint`] on a device given as a string (`cpu`, `cuda`, `cuda:N`).
pub fn load_checkpoint_on(dir: &Path, dataset: &Dataset, device: &str) -> Result<SasRec> {
    let device = parse_device(device)?;
    let dir = &checkpoint::settled(dir);
    let meta = read_meta(dir, dataset)?;
    let tensors = read_weights(dir, &meta, &device)?;
    let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &device);
    let model = SasRecModel::load(vb, &meta.config, meta.n_items)
        .map_err(|e| artifact(&dir.join(WEIGHTS_FILE), e.to_string()))?;
    Ok(SasRec::new(model))
}

/// One user's training example: input `seq[..n-1]`, targets `seq[1..]`, both cut to
/// the last `max_len` positions.
struct Example<'a> {
    input: &'a [ItemId],
    target: &'a [ItemId],
    /// Sorted distinct items of the user (negatives are drawn outside it, for BCE).
    seen: Vec<ItemId>,
}

fn examples(split: &SequenceSplit, max_len: usize) -> Vec<Example<'_>> {
    split
        .users
        .iter()
        .filter(|u| u.train.len() >= 2)
        .map(|u| {
            let n = u.train.len();
            let start = (n - 1).saturating_sub(max_len);
            let mut seen = u.train.clone();
            seen.sort_unstable();
            seen.dedup();
            Example {
                input: &u.train[start..n - 1],
                target: &u.train[start + 1..],
                seen,
            }
        })
        .collect()
}

/// Everything one step needs, built from a batch of examples.
struct StepInput {
    batch: SeqBatch,
    /// Flat `(row * T + position)` indices of the positions with a loss.
    positions: Vec<u32>,
    /// Dense target item per loss position.
    targets: Vec<u32>,
    /// Dense negatives, `negatives` per position (BCE, gBCE).
    negatives: Vec<u32>,
}

fn build_step(
    batch_examples: &[&Example<'_>],
    cfg: &SasRecTrainConfig,
    n_items: usize,
    rng: &mut Rng,
    device: &Device,
) -> candle_core::Result<StepInput> {
    let inputs: Vec<&[ItemId]> = batch_examples.iter().map(|e| e.input).collect();
    let batch = SeqBatch::new(&inputs, cfg.model.max_len, device)?;
    let t = batch.len;
    let k = cfg.loss.negatives();
    let total: usize = batch_examples.iter().map(|e| e.target.len()).sum();
    let mut positions = Vec::with_capacity(total);
    let mut targets = Vec::with_capacity(total);
    let mut negatives = Vec::with_capacity(total * k);
    for (r, e) in batch_examples.iter().enumerate() {
        let pad = batch.pad[r];
        for (j, &target) in e.target.iter().enumerate() {
            positions.push((r * t + pad + j) as u32);
            targets.push(target);
            match cfg.loss {
                Loss::Bce => {
                    // Uniform over the items the user never had (bounded rejection).
                    let mut neg = rng.index(n_items) as u32;
                    for _ in 0..100 {
                        if e.seen.binary_search(&neg).is_err() {
                            break;
                        }
                        neg = rng.index(n_items) as u32;
                    }
                    negatives.push(neg);
                }
                Loss::Gbce { .. } => {
                    negatives.extend((0..k).map(|_| rng.index(n_items) as u32));
                }
                Loss::Ce => {}
            }
        }
    }
    Ok(StepInput {
        batch,
        positions,
        targets,
        negatives,
    })
}

/// The loss of one step (training mode, dropout from `rng`).
fn step_loss(
    model: &SasRecModel,
    input: &StepInput,
    cfg: &SasRecTrainConfig,
    rng: &mut Rng,
) -> candle_core::Result<Tensor> {
    let n_items = model.n_items();
    let d = cfg.model.hidden;
    let h = model.forward(&input.batch, Some(rng))?;
    let (b, t, _) = h.dims3()?;
    let device = h.device().clone();
    let n = input.positions.len();
    let pos = Tensor::from_slice(&input.positions, n, &device)?;
    let h = h.reshape((b * t, d))?.index_select(&pos, 0)?;
    let emb = model.item_embeddings();
    let items = || emb.narrow(0, 1, n_items);
    let beta = match cfg.loss {
        Loss::Gbce { negatives, t } => loss::gbce_beta(negatives, n_items, t),
        _ => 1.0,
    };
    if model.fused_kernels() {
        // Fused heads: never materialise the (N, n_items) logits.
        return match cfg.loss {
            Loss::Ce => loss::softmax_head(&h, emb, &input.targets),
            Loss::Bce | Loss::Gbce { .. } => {
                let k = cfg.loss.negatives();
                let mut cand = Vec::with_capacity(n * (k + 1));
                for (i, &tgt) in input.targets.iter().enumerate() {
                    cand.push(tgt);
                    cand.extend_from_slice(&input.negatives[i * k..(i + 1) * k]);
                }
                loss::binary_head(&h, emb, &cand, k + 1, beta)
            }
        };
    }
    match cfg.loss {
        Loss::Ce => {
            let logits = h.matmul(&items()?.t()?)?;
            loss::cross_entropy(&logits, &input.targets)
        }
        Loss::Bce | Loss::Gbce { .. } => {
            let k = cfg.loss.negatives();
            let m = k + 1;
            let mut cand = Vec::with_capacity(n * m);
            for (i, &tgt) in input.targets.iter().enumerate() {
                cand.push(tgt);
                cand.extend_from_slice(&input.negatives[i * k..(i + 1) * k]);
            }
            let scores = if m * d > n_items {
                // Many negatives: all logits, then pick the candidates.
                let logits = h.matmul(&items()?.t()?)?;
                let cand = Tensor::from_vec(cand, (n, m), &device)?;
                logits.gather(&cand, 1)?
            } else {
                // Few negatives: gather their embeddings; an elementwise product and a
                // sum (a batched matmul would be n tiny gemm calls).
                let shifted: Vec<u32> = cand.iter().map(|&i| i + 1).collect();
                let ids = Tensor::from_vec(shifted, n * m, &device)?;
                let ce = emb.index_select(&ids, 0)?.reshape((n, m, d))?;
                ce.broadcast_mul(&h.unsqueeze(1)?)?.sum(2)?
            };
            loss::binary_loss(&scores, beta)
        }
    }
}

/// Runs `f` in a pool of `threads` threads (or directly when `threads == 0`).
fn in_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// SASRec as the learner trains it.
struct SasRecTrainee<'a> {
    cfg: &'a SasRecTrainConfig,
    dataset: &'a Dataset,
    model: SasRecModel,
    varmap: VarMap,
    examples: Vec<Example<'a>>,
    device: Device,
    pool: Option<rayon::ThreadPool>,
    valid_cases: Vec<EvalCase>,
    eval_cfg: EvalConfig,
}

impl Trainee for SasRecTrainee<'_> {
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        optimizer: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        let cfg = self.cfg;
        let n_items = self.dataset.n_items();
        let mut rng = Rng::stream(cfg.seed, epoch as u64);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        rng.shuffle(&mut order);
        let steps = self.examples.len().div_ceil(cfg.batch_size);
        event(&TrainEvent::EpochStart { epoch, steps });
        let t0 = Instant::now();
        let mut totals = EpochTotals {
            loss_sum: 0.0,
            examples: 0,
        };
        for (s, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let batch: Vec<&Example<'_>> = chunk.iter().map(|&i| &self.examples[i]).collect();
            let (model, device) = (&self.model, &self.device);
            let (loss, positions) = in_pool(self.pool.as_ref(), || -> Result<(f64, usize)> {
                let input =
                    build_step(&batch, cfg, n_items, &mut rng, device).map_err(model_err)?;
                let loss = step_loss(model, &input, cfg, &mut rng).map_err(model_err)?;
                let grads = loss.backward().map_err(model_err)?;
                optimizer.step(&grads)?;
                Ok((
                    loss.to_scalar::<f32>().map_err(model_err)? as f64,
                    input.positions.len(),
                ))
            })?;
            *step += 1;
            if !loss.is_finite() {
                return Err(Error::model(
                    "sasrec",
                    format!(
                        "loss became {loss} at epoch {epoch}, step {}; lower the learning rate",
                        s + 1
                    ),
                ));
            }
            totals.loss_sum += loss * positions as f64;
            totals.examples += positions;
            event(&TrainEvent::Step {
                epoch,
                step: s + 1,
                loss,
                examples_per_sec: totals.examples as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
        }
        Ok(totals)
    }

    fn validation_users(&self) -> usize {
        self.valid_cases.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let rec = SasRec::new(self.model.clone());
        let report = in_pool(self.pool.as_ref(), || {
            evaluate(&rec, &self.valid_cases, &self.eval_cfg, None, &|_| {})
        })?;
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
        let (state, optimizer) = match slot {
            Slot::Last { state, optimizer } => (Some(state.clone()), Some(optimizer)),
            Slot::Best | Slot::Kept => (None, None),
        };
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_VERSION,
            model: "sasrec".into(),
            config: self.cfg.model.clone(),
            loss: self.cfg.loss,
            dataset_name: self.dataset.name.clone(),
            dataset_fingerprint: self.dataset.fingerprint(),
            n_items: self.dataset.n_items(),
            item_ids: self.dataset.items.raw_ids().to_vec(),
            epoch,
            valid: valid.clone(),
            state,
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

/// Trains SASRec on `split`'s training sequences, validating on its validation items.
///
/// See the module documentation for the run folder and resuming. Returns the report
/// of the run; the best model is in `report.best_checkpoint` (load it with
/// [`load_checkpoint`]).
pub fn train(
    dataset: &Dataset,
    split: &SequenceSplit,
    cfg: &SasRecTrainConfig,
    run_dir: &Path,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<SasRecTrainReport> {
    let started = Instant::now();
    let n_items = dataset.n_items();
    cfg.validate(n_items)?;
    if split.n_items != n_items || split.users.len() != dataset.n_users() {
        return Err(Error::Invalid(format!(
            "split has {} users and {} items, dataset {} and {}",
            split.users.len(),
            split.n_items,
            dataset.n_users(),
            n_items
        )));
    }
    let device = parse_device(&cfg.device)?;
    if !device.is_cpu() {
        // Dropout masks are drawn on the device from its generator.
        device
            .set_seed(cfg.seed)
            .map_err(|e| Error::model("sasrec", e))?;
    }
    let pool = if cfg.threads > 0 {
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.threads)
                .build()
                .map_err(|e| Error::model("sasrec", format!("thread pool: {e}")))?,
        )
    } else {
        None
    };
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;

    // Parameters: fresh, or from the `last/` checkpoint to resume.
    let resumed = match &cfg.resume_from {
        Some(from) => {
            let dir = checkpoint::settled(from);
            let meta = read_meta(&dir, dataset)?;
            let path = dir.join(checkpoint::META_FILE);
            if meta.config != cfg.model {
                return Err(artifact(
                    &path,
                    "model config differs from the training config's; cannot resume",
                ));
            }
            let Some(state) = meta.state.clone() else {
                return Err(artifact(
                    &path,
                    "no training state: resume from a run's `last/` folder (written by this version), not `best/`",
                ));
            };
            let params = read_weights(&dir, &meta, &device)?;
            let own = learner::is_own(from, run_dir);
            Some((params, dir, meta.epoch, state, own))
        }
        None => None,
    };
    let params = match &resumed {
        Some((params, ..)) => params.clone(),
        None => {
            let mut rng = Rng::stream(cfg.seed, u64::MAX);
            sasrec::init_parameters(&cfg.model, n_items, &mut rng, &device).map_err(model_err)?
        }
    };
    write_json(&run_dir.join("train_config.json"), cfg)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| Error::model("sasrec", "variable map lock poisoned"))?;
        for (name, t) in params {
            data.insert(name, Var::from_tensor(&t).map_err(model_err)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = SasRecModel::load(vb, &cfg.model, n_items).map_err(model_err)?;
    let mut optimizer = AdamW::new(
        &varmap,
        ParamsAdamW {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: cfg.beta2,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    )?;
    let resume = match resumed {
        Some((_, dir, epoch, state, own)) => {
            optimizer.load(&dir.join(OPTIMIZER_FILE), state.step)?;
            Some(Resume { epoch, state, own })
        }
        None => None,
    };

    let examples = examples(split, cfg.model.max_len);
    if examples.is_empty() {
        return Err(Error::Invalid(
            "no user has two or more training items; nothing to train on".into(),
        ));
    }
    let mut trainee = SasRecTrainee {
        cfg,
        dataset,
        model,
        varmap,
        examples,
        device,
        pool,
        valid_cases: split.cases(Stage::Valid),
        eval_cfg: EvalConfig {
            ks: vec![1, 5, 10, 20],
            batch_size: cfg.eval_batch_size,
            ..EvalConfig::default()
        },
    };
    let schedule = Schedule {
        epochs: cfg.epochs,
        eval_every: cfg.eval_every,
        patience: cfg.patience,
        max_seconds: 0.0,
        keep_every: 0,
        monitor: learner::Monitor::ndcg10(),
    };
    let out = learner::fit(
        run_dir,
        "SASRec",
        &schedule,
        &mut trainee,
        &mut optimizer,
        resume,
        event,
    )?;
    let report = SasRecTrainReport {
        last_epoch: out.last_epoch,
        best_epoch: out.best_epoch,
        best_valid: out.best_valid,
        stopped: out.stop,
        mean_epoch_seconds: out.mean_epoch_seconds,
        seconds: started.elapsed().as_secs_f64(),
        best_checkpoint: run_dir.join("best"),
        last_checkpoint: run_dir.join("last"),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(report)
}
