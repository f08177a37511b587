//! SASRec training: seeded sampling, AdamW, periodic full-ranking validation, early
//! stopping on validation NDCG@10, checkpoints, metrics JSONL and an SVG curve.
//!
//! # Run folder
//!
//! `train` writes into `run_dir` (every file through a temp file and a rename):
//! * `train_config.json` – the [`TrainConfig`];
//! * `metrics.jsonl` – one JSON object per epoch (loss, seconds, throughput, and the
//!   validation metrics on evaluated epochs);
//! * `valid_ndcg.svg` – the validation NDCG@10 curve;
//! * `best/` – the checkpoint with the best validation NDCG@10;
//! * `last/` – the checkpoint after the latest epoch (for resuming);
//! * `report.json` – the [`TrainReport`].
//!
//! # Checkpoints
//!
//! A checkpoint folder holds `weights.safetensors` and `checkpoint.json` (format
//! version [`CHECKPOINT_VERSION`], model config, loss, dataset name and fingerprint, the
//! raw item ids in dense order, the epoch and the best validation result so far).
//!
//! # Resuming
//!
//! With `resume_from` set to a checkpoint folder, training continues at the epoch after
//! the checkpoint's, from its weights and its early-stopping state. Optimizer moments are
//! **not** saved: AdamW restarts from zero moments (and bias correction from step 1).
//! Sampling is seeded per epoch (`Rng::stream(seed, epoch)`), so the epochs after a
//! resume draw the same negatives, order and dropout as an uninterrupted run; the weights
//! differ only through the optimizer restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::io::{settled_dir, write_atomic, write_dir};
use llmrec_core::{
    Dataset, Error, EvalConfig, ItemId, Result, Rng, SequenceSplit, Stage, evaluate,
};
use serde::{Deserialize, Serialize};

use crate::loss::{self, Loss};
use crate::sasrec::{self, Config, SasRec, SasRecModel, SeqBatch};

/// Version of the checkpoint format written by this build. Checkpoints of any other
/// version are refused.
pub const CHECKPOINT_VERSION: u32 = 1;

const WEIGHTS_FILE: &str = "weights.safetensors";
const META_FILE: &str = "checkpoint.json";

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The network.
    pub model: Config,
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

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: Config::default(),
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

impl TrainConfig {
    /// Checks the settings for a dataset of `n_items` items.
    pub fn validate(&self, n_items: usize) -> Result<()> {
        self.model.validate("model")?;
        self.loss.validate(n_items)?;
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(Error::config("lr", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::config("beta2", "must be in [0, 1)"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(Error::config("weight_decay", "must be >= 0"));
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("eval_every", self.eval_every),
            ("patience", self.patience),
            ("eval_batch_size", self.eval_batch_size),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be positive"));
            }
        }
        parse_device(&self.device)?;
        Ok(())
    }
}

/// Progress reported by [`train`], for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Training starts (or resumes) at `start_epoch` (1-based).
    Started {
        /// First epoch to run.
        start_epoch: usize,
        /// Last epoch that may run.
        epochs: usize,
        /// Optimizer steps per epoch.
        steps_per_epoch: usize,
    },
    /// One optimizer step finished.
    Step {
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// Loss of this step.
        loss: f64,
        /// Training positions per second so far in this epoch.
        positions_per_sec: f64,
    },
    /// An epoch finished.
    Epoch {
        /// Epoch (1-based).
        epoch: usize,
        /// Mean step loss.
        loss: f64,
        /// Wall time of the epoch's training steps.
        seconds: f64,
        /// Training positions per second.
        positions_per_sec: f64,
    },
    /// A validation evaluation finished.
    Evaluated {
        /// Epoch (1-based).
        epoch: usize,
        /// Validation NDCG@10.
        ndcg10: f64,
        /// Best validation NDCG@10 so far (including this one).
        best_ndcg10: f64,
        /// Epoch of the best.
        best_epoch: usize,
        /// Whether this evaluation is the new best.
        improved: bool,
        /// Evaluation wall time.
        seconds: f64,
    },
    /// Early stopping: `patience` evaluations without improvement.
    EarlyStop {
        /// Epoch at which training stopped.
        epoch: usize,
        /// Epoch of the best checkpoint.
        best_epoch: usize,
    },
}

/// What a training run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Last epoch run.
    pub last_epoch: usize,
    /// Epoch of the best validation NDCG@10 (0 if never evaluated).
    pub best_epoch: usize,
    /// Validation metrics of the best checkpoint.
    pub best_valid: BTreeMap<String, f64>,
    /// Whether training stopped early.
    pub stopped_early: bool,
    /// Mean wall time of an epoch's training steps.
    pub mean_epoch_seconds: f64,
    /// Total wall time.
    pub seconds: f64,
    /// Folder of the best checkpoint.
    pub best_checkpoint: PathBuf,
    /// Folder of the last checkpoint.
    pub last_checkpoint: PathBuf,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EpochRecord {
    epoch: usize,
    loss: f64,
    seconds: f64,
    positions_per_sec: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid: Option<BTreeMap<String, f64>>,
}

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointMeta {
    format_version: u32,
    model: String,
    config: Config,
    loss: Loss,
    dataset_name: String,
    dataset_fingerprint: String,
    n_items: usize,
    item_ids: Vec<String>,
    epoch: usize,
    best_epoch: usize,
    best_valid: BTreeMap<String, f64>,
}

/// Parses a device string: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                return Err(Error::config(
                    "device",
                    format!("unknown device `{s}`; expected cpu, cuda or cuda:N"),
                ));
            }
        },
    };
    Device::new_cuda(ordinal).map_err(|e| {
        Error::config(
            "device",
            format!("cannot open `{s}` ({e}); CUDA needs a build with `--features cuda` and a GPU"),
        )
    })
}

fn model_err(e: candle_core::Error) -> Error {
    Error::model("sasrec", e)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(format!("json: {e}")))
}

/// Writes a checkpoint folder `dir` (replacing it) through `dir.tmp` and renames, so a
/// crash leaves a whole checkpoint, old (`dir.old`) or new.
fn save_checkpoint(dir: &Path, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| Error::model("sasrec", "variable map lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    write_dir(dir, |tmp| {
        let wpath = tmp.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &wpath).map_err(|e| Error::Artifact {
            path: wpath.clone(),
            message: format!("cannot write weights: {e}"),
        })?;
        write_atomic(&tmp.join(META_FILE), &to_json(meta)?)
    })
}

fn artifact(path: &Path, message: impl Into<String>) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads and checks a checkpoint's JSON against `dataset`.
fn read_meta(dir: &Path, dataset: &Dataset) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| artifact(&path, format!("not a valid checkpoint JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == CHECKPOINT_VERSION as u64 => {}
        Some(v) => {
            return Err(artifact(
                &path,
                format!(
                    "checkpoint format version {v} is not supported by this build (expected {CHECKPOINT_VERSION}); retrain or use a matching llmrec version"
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
    let meta: CheckpointMeta = serde_json::from_value(value)
        .map_err(|e| artifact(&path, format!("invalid checkpoint metadata: {e}")))?;
    if meta.model != "sasrec" {
        return Err(artifact(
            &path,
            format!("a `{}` checkpoint, not sasrec", meta.model),
        ));
    }
    let fp = dataset.fingerprint();
    if meta.dataset_fingerprint != fp {
        return Err(artifact(
            &path,
            format!(
                "trained on dataset `{}` (fingerprint {}), but the data given is `{}` (fingerprint {fp}); use the dataset the checkpoint was trained on",
                meta.dataset_name, meta.dataset_fingerprint, dataset.name
            ),
        ));
    }
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
    let dir = &settled_dir(dir, META_FILE);
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
    cfg: &TrainConfig,
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
    cfg: &TrainConfig,
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

/// Trains SASRec on `split`'s training sequences, validating on its validation items.
///
/// See the module documentation for the run folder and resuming. Returns the report
/// of the run; the best model is in `report.best_checkpoint` (load it with
/// [`load_checkpoint`]).
pub fn train(
    dataset: &Dataset,
    split: &SequenceSplit,
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: &dyn Fn(TrainEvent),
) -> Result<TrainReport> {
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
    write_atomic(&run_dir.join("train_config.json"), &to_json(cfg)?)?;

    // Parameters: fresh, or from the checkpoint to resume.
    let (params, start_epoch, mut best_epoch, mut best_valid) = match &cfg.resume_from {
        Some(dir) => {
            let dir = &settled_dir(dir, META_FILE);
            let meta = read_meta(dir, dataset)?;
            if meta.config != cfg.model {
                return Err(artifact(
                    &dir.join(META_FILE),
                    "model config differs from the training config's; cannot resume",
                ));
            }
            let params = read_weights(dir, &meta, &device)?;
            (params, meta.epoch + 1, meta.best_epoch, meta.best_valid)
        }
        None => {
            let mut rng = Rng::stream(cfg.seed, u64::MAX);
            let params = sasrec::init_parameters(&cfg.model, n_items, &mut rng, &device)
                .map_err(model_err)?;
            (params, 1, 0, BTreeMap::new())
        }
    };
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
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: cfg.beta2,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    )
    .map_err(model_err)?;

    let examples = examples(split, cfg.model.max_len);
    if examples.is_empty() {
        return Err(Error::Invalid(
            "no user has two or more training items; nothing to train on".into(),
        ));
    }
    let steps = examples.len().div_ceil(cfg.batch_size);
    let valid_cases = split.cases(Stage::Valid);
    let eval_cfg = EvalConfig {
        ks: vec![1, 5, 10, 20],
        batch_size: cfg.eval_batch_size,
        ..EvalConfig::default()
    };
    let best_dir = run_dir.join("best");
    let last_dir = run_dir.join("last");
    let metrics_path = run_dir.join("metrics.jsonl");

    // Keep earlier epochs' records when resuming into the same folder.
    let mut records: Vec<EpochRecord> = match std::fs::read_to_string(&metrics_path) {
        Ok(s) if cfg.resume_from.is_some() => s
            .lines()
            .filter_map(|l| serde_json::from_str::<EpochRecord>(l).ok())
            .filter(|r| r.epoch < start_epoch)
            .collect(),
        _ => Vec::new(),
    };
    let mut best_ndcg = best_valid
        .get("NDCG@10")
        .copied()
        .unwrap_or(f64::NEG_INFINITY);
    let mut bad_evals = 0usize;
    let mut stopped_early = false;
    let mut last_epoch = start_epoch.saturating_sub(1);
    let mut epoch_seconds = Vec::new();
    let make_meta =
        |epoch: usize, best_epoch: usize, best_valid: &BTreeMap<String, f64>| CheckpointMeta {
            format_version: CHECKPOINT_VERSION,
            model: "sasrec".into(),
            config: cfg.model.clone(),
            loss: cfg.loss,
            dataset_name: dataset.name.clone(),
            dataset_fingerprint: dataset.fingerprint(),
            n_items,
            item_ids: dataset.items.raw_ids().to_vec(),
            epoch,
            best_epoch,
            best_valid: best_valid.clone(),
        };

    progress(TrainEvent::Started {
        start_epoch,
        epochs: cfg.epochs,
        steps_per_epoch: steps,
    });
    for epoch in start_epoch..=cfg.epochs {
        let mut rng = Rng::stream(cfg.seed, epoch as u64);
        let mut order: Vec<usize> = (0..examples.len()).collect();
        rng.shuffle(&mut order);
        let t0 = Instant::now();
        let mut loss_sum = 0.0;
        let mut n_positions = 0usize;
        for (s, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let batch: Vec<&Example<'_>> = chunk.iter().map(|&i| &examples[i]).collect();
            let (loss, positions) =
                in_pool(pool.as_ref(), || -> candle_core::Result<(f64, usize)> {
                    let input = build_step(&batch, cfg, n_items, &mut rng, &device)?;
                    let loss = step_loss(&model, &input, cfg, &mut rng)?;
                    let grads = loss.backward()?;
                    opt.step(&grads)?;
                    Ok((loss.to_scalar::<f32>()? as f64, input.positions.len()))
                })
                .map_err(model_err)?;
            if !loss.is_finite() {
                return Err(Error::model(
                    "sasrec",
                    format!(
                        "loss became {loss} at epoch {epoch}, step {}; lower the learning rate",
                        s + 1
                    ),
                ));
            }
            loss_sum += loss;
            n_positions += positions;
            progress(TrainEvent::Step {
                epoch,
                step: s + 1,
                steps,
                loss,
                positions_per_sec: n_positions as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let seconds = t0.elapsed().as_secs_f64();
        epoch_seconds.push(seconds);
        let mean_loss = loss_sum / steps as f64;
        let pps = n_positions as f64 / seconds.max(1e-9);
        progress(TrainEvent::Epoch {
            epoch,
            loss: mean_loss,
            seconds,
            positions_per_sec: pps,
        });
        last_epoch = epoch;
        let mut record = EpochRecord {
            epoch,
            loss: mean_loss,
            seconds,
            positions_per_sec: pps,
            valid: None,
        };
        let mut stop = false;
        if epoch % cfg.eval_every == 0 || epoch == cfg.epochs {
            let te = Instant::now();
            let rec = SasRec::new(model.clone());
            let report = in_pool(pool.as_ref(), || {
                evaluate(&rec, &valid_cases, &eval_cfg, None, &|_| {})
            })?;
            let ndcg = report.get("NDCG@10").unwrap_or(0.0);
            let improved = ndcg > best_ndcg;
            if improved {
                best_ndcg = ndcg;
                best_epoch = epoch;
                best_valid = report.metrics.clone();
                bad_evals = 0;
                save_checkpoint(
                    &best_dir,
                    &varmap,
                    &make_meta(epoch, best_epoch, &best_valid),
                )?;
            } else {
                bad_evals += 1;
            }
            progress(TrainEvent::Evaluated {
                epoch,
                ndcg10: ndcg,
                best_ndcg10: best_ndcg,
                best_epoch,
                improved,
                seconds: te.elapsed().as_secs_f64(),
            });
            record.valid = Some(report.metrics);
            if bad_evals >= cfg.patience {
                stop = true;
            }
        }
        save_checkpoint(
            &last_dir,
            &varmap,
            &make_meta(epoch, best_epoch, &best_valid),
        )?;
        records.push(record);
        write_metrics(run_dir, &records)?;
        if stop {
            stopped_early = true;
            progress(TrainEvent::EarlyStop { epoch, best_epoch });
            break;
        }
    }
    let report = TrainReport {
        last_epoch,
        best_epoch,
        best_valid,
        stopped_early,
        mean_epoch_seconds: if epoch_seconds.is_empty() {
            0.0
        } else {
            epoch_seconds.iter().sum::<f64>() / epoch_seconds.len() as f64
        },
        seconds: started.elapsed().as_secs_f64(),
        best_checkpoint: best_dir,
        last_checkpoint: last_dir,
    };
    write_atomic(&run_dir.join("report.json"), &to_json(&report)?)?;
    Ok(report)
}

fn write_metrics(run_dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut jsonl = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| Error::Invalid(format!("json: {e}")))?;
        jsonl.push_str(&line);
        jsonl.push('\n');
    }
    write_atomic(&run_dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    let points: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| {
            let v = r.valid.as_ref()?.get("NDCG@10")?;
            Some((r.epoch as f64, *v))
        })
        .collect();
    let svg = crate::svg::line_plot("SASRec validation", "epoch", "NDCG@10", &points);
    write_atomic(&run_dir.join("valid_ndcg.svg"), svg.as_bytes())
}
