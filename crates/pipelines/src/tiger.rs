//! The TIGER pipeline: item embeddings → Semantic IDs → seq2seq training → evaluation.
//!
//! Three steps, each a function with a progress callback and an optional run folder:
//!
//! 1. [`semantic_ids`]: RQ-VAE (or RQ-KMeans, or the random / LSH baselines) over the
//!    item text embeddings of **every** catalogue item, so items never seen in training
//!    still get an ID from their text (cold start). Writes `semantic_ids.json` (the
//!    versioned artifact), `rqvae_metrics.jsonl`, `rqvae.svg`, `rqvae_report.json` and the RQ-VAE
//!    weights `rqvae.safetensors` with the input standardisation (the catalogue's
//!    per-dimension mean and scale) in `rqvae_standardization.json`.
//! 2. [`train`]: teacher-forced training on every prefix of the training sequences,
//!    batched by history length with a data-loader thread, learning rate constant for
//!    `constant_steps` then inverse-square-root decay, validation by constrained beam
//!    search and full-ranking metrics, early stopping on NDCG@10. Writes
//!    `train_config.json`, `metrics.jsonl`, `loss.svg`, `valid.svg`, `best/` (weights,
//!    checkpoint JSON and the Semantic-ID table), `last/` (the same after every epoch,
//!    plus the optimizer moments and the loop's state), `epochs/epoch-NNN/` (the weights
//!    every `keep_every` epochs, for [`average_checkpoints`]) and `report.json`.
//!
//!    **Resuming:** with `resume_from` set to a `last/` folder (`tiger train --resume`),
//!    training continues at the next epoch with the saved weights, AdamW moments, step
//!    count and early-stopping state. Batch order and dropout are seeded per epoch, so on
//!    the CPU a resumed run gives the same weights as one that was never stopped, as long
//!    as the stop came after a scheduled validation (always so with `eval_every = 1`): a
//!    stop by the time limit or the epoch count validates its last epoch even off the
//!    schedule, and that validation counts for the best weights and early stopping. On a
//!    GPU the dropout masks come from the device's generator, which is reseeded, not
//!    restored. `max_seconds` counts from the start of each process. Resumed into the run
//!    folder that holds `last/`, the run keeps its `best/` and `metrics.jsonl`; resumed
//!    into another folder, it starts new records and a new best there. A run that had
//!    stopped early stays stopped.
//! 3. [`eval`]: full-ranking evaluation of the leave-one-out split with the core
//!    evaluator, the invalid-ID rate with constraints on (must be 0) and off (a
//!    diagnostic), and metrics by how often the target occurs in training (cold start).
//!
//! Every file is written through a temp file and a rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::eval::UserResult;
use llmrec_core::io::{settled_dir, write_atomic, write_dir, write_with};
use llmrec_core::{
    Dataset, Error, EvalCase, EvalConfig, EvalReport, ItemId, Query, Result, Rng, SequenceSplit,
    Stage, UserId, evaluate,
};
use llmrec_models::optim::AdamW;
use llmrec_models::rqvae::{self, EpochStats, RqVaeReport};
use llmrec_models::semantic_ids::{self, IdScheme, SemanticIds};
use llmrec_models::spectral;
use llmrec_models::tiger::{self, Tiger, TigerModel, TrainBatch, Vocab};
use serde::{Deserialize, Serialize};

use llmrec_core::plot::{Series, chart};

/// Version of the TIGER checkpoint format written by this build.
pub const CHECKPOINT_VERSION: u32 = 1;

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(format!("json: {e}")))
}

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

fn artifact(path: &Path, message: impl Into<String>) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(s: &str) -> Result<Device> {
    llmrec_models::parse_device(s)
}

/// All settings of a TIGER run (IDs, training, evaluation), e.g. one JSON file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Semantic-ID step.
    pub ids: IdsConfig,
    /// Training step.
    pub train: TrainConfig,
    /// Evaluation step.
    pub eval: EvalOptions,
    /// How the evaluated model is chosen on validation after training.
    pub select: SelectConfig,
}

// ---------------------------------------------------------------------------------------
// 1. Semantic IDs

/// Settings of the Semantic-ID step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdsConfig {
    /// Which IDs: `rq-vae` (default), `rq-kmeans`, `random` or `lsh`.
    pub scheme: IdScheme,
    /// RQ-VAE settings. Its `model.levels`, `model.codebook_size` and `seed` also shape
    /// the baselines, so every scheme has the same shape.
    pub rqvae: rqvae::TrainConfig,
    /// Return an error (after writing the run folder) when the RQ-VAE's codebook usage
    /// is below `rqvae.min_usage` on some level. Default true.
    pub fail_on_collapse: bool,
    /// Device for the RQ-VAE (`cpu`, `cuda`, `cuda:N`). Default `cpu`.
    pub device: String,
    /// Collaborative vectors fused into the text embeddings before the RQ-VAE (off by
    /// default, which is the paper's text-only TIGER).
    pub collab: CollabConfig,
}

impl Default for IdsConfig {
    fn default() -> Self {
        IdsConfig {
            scheme: IdScheme::RqVae,
            rqvae: rqvae::TrainConfig::default(),
            fail_on_collapse: true,
            device: "cpu".into(),
            collab: CollabConfig::default(),
        }
    }
}

/// Fusion of collaborative signal into the RQ-VAE's input (`ids.collab`): spectral item
/// vectors of the **training** user-item graph of the leave-one-out split
/// ([`llmrec_models::spectral`]) are standardised, weighted and appended to the
/// standardised text embeddings, and the RQ-VAE runs on the result without a second
/// standardisation. Items without training interactions (cold start) get the mean,
/// i.e. zeros, in the collaborative part, so their IDs come from their text alone. This
/// is an extension in the spirit of LETTER and of P5's collaborative indexing, not
/// part of the TIGER paper; results with it must say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollabConfig {
    /// Share of the fused vector's variance that is collaborative, in `[0, 1)`; 0 turns
    /// the fusion off. Default 0.
    pub share: f64,
    /// The spectral embedding.
    pub spectral: spectral::Config,
}

impl Default for CollabConfig {
    fn default() -> Self {
        CollabConfig {
            share: 0.0,
            spectral: spectral::Config::default(),
        }
    }
}

/// What the fusion did, written to `collab_report.json`.
#[derive(Debug, Clone, Serialize)]
struct CollabReport {
    share: f64,
    /// Factor on each standardised collaborative dimension.
    weight: f64,
    /// Items with training interactions (the others get zeros).
    covered: usize,
    items: usize,
    eigenvalues: Vec<f64>,
}

/// Standardised text plus `weight ×` standardised collaborative vectors (see
/// [`CollabConfig`]). Text is standardised only when `standardize_text`.
fn fuse(
    text: &[Vec<f32>],
    cf: &[Vec<f32>],
    covered: &[bool],
    share: f64,
    standardize_text: bool,
) -> Result<(Vec<Vec<f32>>, f64)> {
    if !(0.0..1.0).contains(&share) {
        return Err(Error::config(
            "ids.collab.share",
            format!("must be in [0, 1), got {share}"),
        ));
    }
    let d_text = semantic_ids::check_embeddings(text)?;
    let d_cf = semantic_ids::check_embeddings(cf)?;
    let text = if standardize_text {
        semantic_ids::standardize(text)?
    } else {
        text.to_vec()
    };
    let known: Vec<Vec<f32>> = cf
        .iter()
        .zip(covered)
        .filter(|(_, c)| **c)
        .map(|(v, _)| v.clone())
        .collect();
    if known.is_empty() {
        return Err(Error::Invalid(
            "ids.collab: no item has a training interaction".into(),
        ));
    }
    let st = semantic_ids::Standardization::fit(&known)?;
    let weight = (share / (1.0 - share) * d_text as f64 / d_cf as f64).sqrt();
    let fused = text
        .into_iter()
        .zip(cf)
        .zip(covered)
        .map(|((mut t, c), &cov)| {
            if cov {
                let z = st.apply(std::slice::from_ref(c))?;
                t.extend(z[0].iter().map(|x| (*x as f64 * weight) as f32));
            } else {
                t.extend(std::iter::repeat_n(0.0, d_cf));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((fused, weight))
}

/// Result of [`semantic_ids`].
#[derive(Debug, Clone)]
pub struct IdsOutput {
    /// The table (already checked and tied to the dataset).
    pub ids: SemanticIds,
    /// The RQ-VAE run, for the `rq-vae` scheme.
    pub report: Option<RqVaeReport>,
}

/// Makes the Semantic-ID table of `dataset` from one embedding per item (dense item
/// order; e.g. MiniLM vectors of [`llmrec_core::ItemText::to_text`]).
///
/// `progress` sees every RQ-VAE epoch. With `run_dir`, writes the files listed in the
/// module docs there.
pub fn semantic_ids(
    dataset: &Dataset,
    embeddings: &[Vec<f32>],
    cfg: &IdsConfig,
    run_dir: Option<&Path>,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<IdsOutput> {
    if embeddings.len() != dataset.n_items() {
        return Err(Error::Invalid(format!(
            "{} embeddings for {} items of `{}`",
            embeddings.len(),
            dataset.n_items(),
            dataset.name
        )));
    }
    if let Some(d) = run_dir {
        mkdir(d)?;
        write_atomic(&d.join("ids_config.json"), &json(cfg)?)?;
    }
    let levels = cfg.rqvae.model.levels;
    let k = cfg.rqvae.model.codebook_size;
    let seed = cfg.rqvae.seed;
    let mut rqvae_cfg = cfg.rqvae.clone();
    let mut collab = None;
    let fused;
    if !(0.0..1.0).contains(&cfg.collab.share) {
        return Err(Error::config(
            "ids.collab.share",
            format!("must be in [0, 1), got {}", cfg.collab.share),
        ));
    }
    let embeddings = if cfg.collab.share > 0.0 {
        let dim = semantic_ids::check_embeddings(embeddings)?;
        if dim != cfg.rqvae.model.input_dim {
            return Err(Error::config(
                "ids.rqvae.model.input_dim",
                format!(
                    "is {}, but the item embeddings have {dim} dimensions",
                    cfg.rqvae.model.input_dim
                ),
            ));
        }
        if cfg.scheme != IdScheme::RqVae {
            return Err(Error::config(
                "ids.collab.share",
                format!(
                    "collaborative fusion needs the rq-vae scheme, not {}",
                    cfg.scheme.label()
                ),
            ));
        }
        // Training part of the same leave-one-out split that training and evaluation
        // use: no validation or test item enters the graph.
        let split = llmrec_data::split::leave_one_out(dataset);
        let spec = spectral::item_embeddings(
            &split.train_sequences(),
            dataset.n_items(),
            &cfg.collab.spectral,
        )?;
        let (f, weight) = fuse(
            embeddings,
            &spec.vectors,
            &spec.covered,
            cfg.collab.share,
            cfg.rqvae.standardize,
        )?;
        fused = f;
        rqvae_cfg.standardize = false;
        rqvae_cfg.model.input_dim = fused[0].len();
        collab = Some(CollabReport {
            share: cfg.collab.share,
            weight,
            covered: spec.covered.iter().filter(|&&c| c).count(),
            items: dataset.n_items(),
            eigenvalues: spec.eigenvalues,
        });
        if let Some(d) = run_dir {
            write_atomic(&d.join("collab_report.json"), &json(&collab)?)?;
        }
        &fused[..]
    } else {
        embeddings
    };
    let (mut ids, report) = match cfg.scheme {
        IdScheme::Random => (
            semantic_ids::random_ids(dataset.n_items(), levels, k, seed)?,
            None,
        ),
        IdScheme::Lsh => (semantic_ids::lsh_ids(embeddings, levels, k, seed)?, None),
        IdScheme::RqKmeans => (
            semantic_ids::rq_kmeans_ids(embeddings, levels, k, cfg.rqvae.kmeans_iters, seed)?,
            None,
        ),
        IdScheme::RqVae => {
            let dev = device(&cfg.device)?;
            let mut epochs = Vec::new();
            let trained = rqvae::train(embeddings, &rqvae_cfg, &dev, &mut |s| {
                progress(s);
                epochs.push(s.clone());
                if let Some(d) = run_dir {
                    // Best effort mid-run; the final write below reports errors.
                    let _ = jsonl(&epochs)
                        .and_then(|b| write_atomic(&d.join("rqvae_metrics.jsonl"), &b));
                }
            })?;
            if let Some(d) = run_dir {
                write_atomic(
                    &d.join("rqvae_metrics.jsonl"),
                    &jsonl(&trained.report.epochs)?,
                )?;
                write_atomic(&d.join("rqvae_report.json"), &json(&trained.report)?)?;
                write_atomic(&d.join("rqvae.svg"), rqvae_plot(&trained.report).as_bytes())?;
                if let Some(st) = &trained.standardization {
                    write_atomic(&d.join("rqvae_standardization.json"), &json(st)?)?;
                }
                write_with(&d.join("rqvae.safetensors"), |tmp| {
                    trained
                        .varmap
                        .save(tmp)
                        .map_err(|e| artifact(tmp, format!("cannot write RQ-VAE weights: {e}")))
                })?;
            }
            (trained.semantic_ids()?, Some(trained.report))
        }
    };
    if let (Some(c), serde_json::Value::Object(m)) = (&collab, &mut ids.config) {
        m.insert(
            "collab".into(),
            serde_json::json!({"config": cfg.collab, "report": c}),
        );
    }
    let ids = ids.for_dataset(dataset);
    ids.validate()?;
    if let Some(d) = run_dir {
        ids.save(&d.join("semantic_ids.json"))?;
    }
    if cfg.fail_on_collapse
        && let Some(r) = &report
        && let Some(why) = &r.failure
    {
        return Err(Error::model("rq-vae", format!("run failed: {why}")));
    }
    Ok(IdsOutput { ids, report })
}

fn rqvae_plot(r: &RqVaeReport) -> String {
    let levels = r.usage.len();
    let names: Vec<String> = (0..levels).map(|l| format!("usage L{l}")).collect();
    let mut series: Vec<Series<'_>> = vec![Series {
        name: "recon loss",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.recon_loss))
            .collect(),
    }];
    for (l, name) in names.iter().enumerate() {
        series.push(Series {
            name,
            points: r
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.usage.get(l).copied().unwrap_or(f64::NAN)))
                .collect(),
        });
    }
    series.push(Series {
        name: "collision rate",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.collision_rate))
            .collect(),
    });
    chart(
        "RQ-VAE: reconstruction loss and codebook usage",
        "epoch",
        &series,
    )
}

// ---------------------------------------------------------------------------------------
// 2. Training

/// Training settings. Defaults follow the paper where it says (model shape, batch 256,
/// lr 0.01 for 10k steps then inverse-square-root decay); a CPU configuration shrinks
/// `model` and `epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The network.
    pub model: tiger::Config,
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

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: tiger::Config::default(),
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

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.model.validate("tiger.model")?;
        if self.epochs == 0 || self.batch_size == 0 || self.eval_every == 0 || self.beam_size == 0 {
            return Err(Error::config(
                "tiger.epochs/batch_size/eval_every/beam_size",
                "must be positive",
            ));
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(Error::config("tiger.lr", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::config(
                "tiger.label_smoothing",
                format!("must be in [0, 1), got {}", self.label_smoothing),
            ));
        }
        Ok(())
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

/// One epoch of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean token cross-entropy.
    pub loss: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Steps so far.
    pub steps: usize,
    /// Training seconds of this epoch (without validation).
    pub seconds: f64,
    /// Training examples per second.
    pub examples_per_sec: f64,
    /// Validation metrics, on evaluated epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<BTreeMap<String, f64>>,
    /// Validation seconds.
    pub valid_seconds: f64,
}

/// What [`train`] reports while it runs.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Start of an epoch with this many steps.
    EpochStart {
        /// 1-based epoch.
        epoch: usize,
        /// Steps in the epoch.
        steps: usize,
    },
    /// A step finished.
    Step {
        /// Loss of the step.
        loss: f64,
    },
    /// Validation started for this many users.
    Validating {
        /// Users.
        users: usize,
    },
    /// An epoch (and its validation, if any) finished.
    Epoch(EpochRecord),
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
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

/// The checkpoint JSON next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    format_version: u32,
    model: String,
    config: tiger::Config,
    vocab: Vocab,
    dataset_name: String,
    dataset_fingerprint: String,
    ids_scheme: IdScheme,
    epoch: usize,
    valid: BTreeMap<String, f64>,
    /// Where training stood after `epoch` (in `last/` checkpoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<TrainState>,
    /// The checkpoints whose weights were averaged into this one (see
    /// [`average_checkpoints`]); empty for a checkpoint written by training.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    averaged_from: Vec<AveragedFrom>,
}

/// One input of an averaged checkpoint ([`average_checkpoints`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AveragedFrom {
    /// The checkpoint folder read.
    pub checkpoint: PathBuf,
    /// Its training epoch.
    pub epoch: usize,
}

/// The training loop's state after an epoch, kept in `last/` for resuming.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TrainState {
    /// Optimizer steps taken.
    step: usize,
    /// Best validation so far: its epoch (0: none yet) and metrics.
    best_epoch: usize,
    best_valid: BTreeMap<String, f64>,
    /// Validations since the best one.
    since_best: usize,
}

/// Optimizer moments inside a `last/` checkpoint.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

/// Writes a checkpoint folder `dir` (replacing it) through `dir.tmp` and renames, so a
/// crash leaves a whole checkpoint, old or new. `opt`: also the optimizer moments.
fn save_checkpoint(
    dir: &Path,
    varmap: &VarMap,
    meta: &CheckpointMeta,
    ids: &SemanticIds,
    opt: Option<&AdamW>,
) -> Result<()> {
    write_dir(dir, |tmp| {
        let w = tmp.join("weights.safetensors");
        varmap
            .save(&w)
            .map_err(|e| artifact(&w, format!("cannot write weights: {e}")))?;
        if let Some(opt) = opt {
            opt.save(&tmp.join(OPTIMIZER_FILE))?;
        }
        ids.save(&tmp.join("semantic_ids.json"))?;
        write_atomic(&tmp.join("checkpoint.json"), &json(meta)?)
    })
}

/// The complete checkpoint that [`save_checkpoint`] left at `dir`: `dir` itself, or
/// `dir.old` when a crash came between its two renames.
fn checkpoint_dir(dir: &Path) -> PathBuf {
    settled_dir(dir, "checkpoint.json")
}

/// Loads a checkpoint folder written by [`train`] (`best/`) for `dataset`.
///
/// Refuses other format versions, another dataset, and corrupt or mismatching files
/// with [`Error::Artifact`].
pub fn load_checkpoint(dir: &Path, dataset: &Dataset, device_name: &str) -> Result<Tiger> {
    let dir = &checkpoint_dir(dir);
    let dev = device(device_name)?;
    let (meta, ids) = read_checkpoint(dir, dataset)?;
    let mpath = dir.join("checkpoint.json");
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = TigerModel::load(vb, &meta.config, &meta.vocab)
        .map_err(|e| artifact(&mpath, e.to_string()))?;
    let w = dir.join("weights.safetensors");
    varmap
        .load(&w)
        .map_err(|e| artifact(&w, format!("cannot load weights: {e}")))?;
    Tiger::new(model, &ids)
}

/// What a checkpoint folder holds, for result records: the folder read (after the
/// `.old` fallback), its epoch, network config, validation metrics and the provenance of
/// its Semantic-ID table ([`SemanticIds::provenance`]).
pub fn checkpoint_provenance(dir: &Path, dataset: &Dataset) -> Result<serde_json::Value> {
    let dir = checkpoint_dir(dir);
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
        let dir = checkpoint_dir(d);
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
        let w = dir.join("weights.safetensors");
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
            return Err(differs("checkpoint.json", "network configuration"));
        }
        if ids != *ids0 {
            return Err(differs("semantic_ids.json", "Semantic-ID table"));
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
    write_dir(out, |tmp| {
        let w = tmp.join("weights.safetensors");
        candle_core::safetensors::save(&mean, &w)
            .map_err(|e| artifact(&w, format!("cannot write weights: {e}")))?;
        ids0.save(&tmp.join("semantic_ids.json"))?;
        write_atomic(&tmp.join("checkpoint.json"), &json(&meta)?)
    })?;
    Ok(from)
}

/// The result record of a network: its checkpoint folder, epoch, config, validation
/// metrics and the provenance of its Semantic-ID table.
pub fn provenance(
    checkpoint: &Path,
    epoch: usize,
    config: &tiger::Config,
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
fn read_checkpoint(dir: &Path, dataset: &Dataset) -> Result<(CheckpointMeta, SemanticIds)> {
    let mpath = dir.join("checkpoint.json");
    let bytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| artifact(&mpath, format!("not a valid checkpoint JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == CHECKPOINT_VERSION as u64 => {}
        Some(v) => {
            return Err(artifact(
                &mpath,
                format!(
                    "TIGER checkpoint format version {v} is not supported (expected {CHECKPOINT_VERSION})"
                ),
            ));
        }
        None => {
            return Err(artifact(
                &mpath,
                "no `format_version`: not an llmrec checkpoint",
            ));
        }
    }
    let meta: CheckpointMeta = serde_json::from_value(value)
        .map_err(|e| artifact(&mpath, format!("invalid checkpoint metadata: {e}")))?;
    if meta.model != "tiger" {
        return Err(artifact(
            &mpath,
            format!("a `{}` checkpoint, not tiger", meta.model),
        ));
    }
    let ids_path = dir.join("semantic_ids.json");
    let ids = SemanticIds::load(&ids_path)?;
    ids.check_dataset(dataset, &ids_path)?;
    if Vocab::new(&ids, meta.config.user_buckets) != meta.vocab {
        return Err(artifact(
            &mpath,
            "vocabulary does not match the Semantic-ID table",
        ));
    }
    Ok((meta, ids))
}

fn sample_cases(mut cases: Vec<EvalCase>, n: usize, seed: u64) -> Vec<EvalCase> {
    if n > 0 && cases.len() > n {
        let mut rng = Rng::stream(seed, 0xCA5E);
        rng.shuffle(&mut cases);
        cases.truncate(n);
        cases.sort_by_key(|c| c.user);
    }
    cases
}

/// Trains TIGER on `split`'s training sequences with the Semantic IDs `ids`, validating
/// on the validation stage; returns the model with the best validation NDCG@10.
pub fn train(
    dataset: &Dataset,
    split: &SequenceSplit,
    ids: &SemanticIds,
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<(Tiger, TrainReport)> {
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
    mkdir(run_dir)?;
    let dev = device(&cfg.device)?;
    if !dev.is_cpu() {
        // Dropout masks are drawn on the device from its generator.
        dev.set_seed(cfg.seed)
            .map_err(|e| Error::model("tiger", e))?;
    }
    let vocab = Vocab::new(ids, cfg.model.user_buckets);
    let (model, mut varmap) = tiger::new_model(&cfg.model, &vocab, cfg.seed, &dev)?;
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

    let mut records: Vec<EpochRecord> = Vec::new();
    let mut best: Option<(usize, BTreeMap<String, f64>)> = None;
    let mut since_best = 0usize;
    let mut step = 0usize;
    let mut stopped = "epochs".to_string();
    let best_dir = run_dir.join("best");
    let mut start_epoch = 1;
    if let Some(from) = &cfg.resume_from {
        let state = resume(from, dataset, ids, cfg, &mut varmap, &mut opt)?;
        start_epoch = state.epoch + 1;
        step = state.train.step;
        since_best = state.train.since_best;
        // The earlier records and best weights are this run folder's only if `from` is
        // its `last/`; resumed elsewhere, the run starts new records and a new best. The
        // best weights are kept only if `best/` holds the saved best epoch.
        let canonical = |p: &Path| p.canonicalize().ok();
        let own = match (from.parent().and_then(canonical), canonical(run_dir)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        let best_epoch_on_disk = read_checkpoint(&checkpoint_dir(&best_dir), dataset)
            .map(|(m, _)| m.epoch)
            .ok();
        if own && state.train.best_epoch > 0 && best_epoch_on_disk == Some(state.train.best_epoch) {
            best = Some((state.train.best_epoch, state.train.best_valid));
        }
        if own {
            records = read_records(&run_dir.join("metrics.jsonl"))?;
            records.retain(|r| r.epoch <= state.epoch);
        }
    }
    write_atomic(&run_dir.join("train_config.json"), &json(cfg)?)?;
    if cfg.patience > 0 && since_best >= cfg.patience {
        // A resumed run that had already stopped early trains no further.
        start_epoch = cfg.epochs + 1;
        stopped = "early stopping".into();
    }
    let meta_at = |epoch, valid, state| CheckpointMeta {
        format_version: CHECKPOINT_VERSION,
        model: "tiger".into(),
        config: cfg.model.clone(),
        vocab,
        dataset_name: dataset.name.clone(),
        dataset_fingerprint: dataset.fingerprint(),
        ids_scheme: ids.scheme,
        epoch,
        valid,
        state,
        averaged_from: Vec::new(),
    };
    let seqs: Vec<&[ItemId]> = split.users.iter().map(|u| u.train.as_slice()).collect();
    for epoch in start_epoch..=cfg.epochs {
        let t0 = Instant::now();
        let mut rng = Rng::stream(cfg.seed, epoch as u64);
        let batches = length_batches(&ex, cfg.model.max_history, cfg.batch_size, &mut rng);
        progress(&TrainEvent::EpochStart {
            epoch,
            steps: batches.len(),
        });
        let mut loss_sum = 0.0;
        let mut seen = 0usize;
        let mut drop_rng = Rng::stream(cfg.seed ^ 0xD20B, epoch as u64);
        // Data-loader thread: builds the next batches while this thread trains.
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = mpsc::sync_channel::<Result<(TrainBatch, usize)>>(4);
            let codes = &ids.codes;
            let dev2 = dev.clone();
            let seqs = &seqs;
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
            for r in rx {
                let (batch, n) = r?;
                step += 1;
                opt.set_learning_rate(cfg.lr_at(step));
                let loss = model
                    .loss_smoothed(&batch, Some(&mut drop_rng), cfg.label_smoothing)
                    .map_err(|e| Error::model("tiger", e))?;
                opt.backward_step(&loss)
                    .map_err(|e| Error::model("tiger", e))?;
                let l = loss
                    .to_scalar::<f32>()
                    .map_err(|e| Error::model("tiger", e))? as f64;
                if !l.is_finite() {
                    return Err(Error::model(
                        "tiger",
                        format!("loss is {l} at step {step}; lower the learning rate"),
                    ));
                }
                loss_sum += l * n as f64;
                seen += n;
                progress(&TrainEvent::Step { loss: l });
            }
            Ok(())
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut rec_epoch = EpochRecord {
            epoch,
            loss: loss_sum / seen.max(1) as f64,
            lr: cfg.lr_at(step),
            steps: step,
            seconds,
            examples_per_sec: seen as f64 / seconds.max(1e-9),
            valid: None,
            valid_seconds: 0.0,
        };
        let last = epoch == cfg.epochs
            || (cfg.max_seconds > 0.0 && start.elapsed().as_secs_f64() >= cfg.max_seconds);
        if epoch % cfg.eval_every == 0 || last {
            progress(&TrainEvent::Validating { users: valid.len() });
            let tv = Instant::now();
            let report = evaluate(&rec, &valid, &eval_cfg, None, &|_| {})?;
            rec_epoch.valid_seconds = tv.elapsed().as_secs_f64();
            let ndcg = report.get("NDCG@10").unwrap_or(0.0);
            if best
                .as_ref()
                .is_none_or(|(_, m)| ndcg > m.get("NDCG@10").copied().unwrap_or(0.0))
            {
                best = Some((epoch, report.metrics.clone()));
                since_best = 0;
                let meta = meta_at(epoch, report.metrics.clone(), None);
                save_checkpoint(&best_dir, &varmap, &meta, ids, None)?;
            } else {
                since_best += 1;
            }
            rec_epoch.valid = Some(report.metrics);
        }
        progress(&TrainEvent::Epoch(rec_epoch.clone()));
        // Everything a resume needs, after every epoch.
        let (best_epoch, best_valid) = best.clone().unwrap_or_default();
        let meta = meta_at(
            epoch,
            rec_epoch.valid.clone().unwrap_or_default(),
            Some(TrainState {
                step,
                best_epoch,
                best_valid,
                since_best,
            }),
        );
        records.push(rec_epoch);
        write_atomic(&run_dir.join("metrics.jsonl"), &jsonl(&records)?)?;
        write_plots(run_dir, &records)?;
        save_checkpoint(&run_dir.join("last"), &varmap, &meta, ids, Some(&opt))?;
        if cfg.keep_every > 0 && epoch % cfg.keep_every == 0 {
            let kept = run_dir.join("epochs").join(format!("epoch-{epoch:03}"));
            let meta = CheckpointMeta {
                state: None,
                ..meta
            };
            save_checkpoint(&kept, &varmap, &meta, ids, None)?;
        }
        if cfg.patience > 0 && since_best >= cfg.patience {
            stopped = "early stopping".into();
            break;
        }
        if cfg.max_seconds > 0.0 && start.elapsed().as_secs_f64() >= cfg.max_seconds {
            stopped = "time limit".into();
            break;
        }
    }
    let (best_epoch, best_valid) = best.unwrap_or_default();
    let mut tiger = load_checkpoint(&checkpoint_dir(&best_dir), dataset, &cfg.device)?;
    tiger.beam_size = cfg.beam_size;
    let report = TrainReport {
        epochs: records,
        best_epoch,
        best_valid,
        examples: ex.len(),
        parameters,
        seconds: start.elapsed().as_secs_f64(),
        stopped,
    };
    write_atomic(&run_dir.join("report.json"), &json(&report)?)?;
    Ok((tiger, report))
}

/// A `last/` checkpoint's epoch and training state.
struct Resumed {
    epoch: usize,
    train: TrainState,
}

/// Loads the weights and optimizer state of the `last/` checkpoint `from` into `varmap`
/// and `opt`, after checking that it belongs to this dataset, Semantic-ID table and
/// model configuration.
fn resume(
    from: &Path,
    dataset: &Dataset,
    ids: &SemanticIds,
    cfg: &TrainConfig,
    varmap: &mut VarMap,
    opt: &mut AdamW,
) -> Result<Resumed> {
    let from = &checkpoint_dir(from);
    let (meta, saved_ids) = read_checkpoint(from, dataset)?;
    let mpath = from.join("checkpoint.json");
    let Some(train) = meta.state else {
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
            &from.join("semantic_ids.json"),
            "the Semantic-ID table differs from the one training was given; cannot resume",
        ));
    }
    let w = from.join("weights.safetensors");
    varmap
        .load(&w)
        .map_err(|e| artifact(&w, format!("cannot load weights: {e}")))?;
    opt.load(&from.join(OPTIMIZER_FILE), train.step)?;
    Ok(Resumed {
        epoch: meta.epoch,
        train,
    })
}

/// The epoch records of `metrics.jsonl`, or none if there is no such file.
fn read_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("expected an epoch record: {e}"),
            })
        })
        .collect()
}

fn write_plots(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let loss = chart(
        "TIGER training loss (token cross-entropy)",
        "epoch",
        &[Series {
            name: "train loss",
            points: records.iter().map(|r| (r.epoch as f64, r.loss)).collect(),
        }],
    );
    write_atomic(&dir.join("loss.svg"), loss.as_bytes())?;
    let metric = |name: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r.epoch as f64, *r.valid.as_ref()?.get(name)?)))
            .collect()
    };
    let valid = chart(
        "TIGER validation (full ranking)",
        "epoch",
        &[
            Series {
                name: "NDCG@10",
                points: metric("NDCG@10"),
            },
            Series {
                name: "Recall@10",
                points: metric("Recall@10"),
            },
        ],
    );
    write_atomic(&dir.join("valid.svg"), valid.as_bytes())
}

// ---------------------------------------------------------------------------------------
// 3. Evaluation

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// The core evaluator's settings (full ranking, history excluded).
    pub eval: EvalConfig,
    /// Which held-out items. Default test.
    pub stage: Stage,
    /// Beams (items with a real score per user). Default 30.
    pub beam_size: usize,
    /// Users for the invalid-ID diagnostic (seeded sample; 0: all). Default 1000.
    pub invalid_users: usize,
    /// The invalid-ID rate counts the top this many beams. Default 10.
    pub invalid_k: usize,
    /// Targets seen at most this often in training count as rare. Default 4.
    pub rare_max: usize,
    /// When the evaluator excludes history items, keep them out of the beams too, so
    /// the beams hold only items that can count. Default true; false evaluates as
    /// before this option, with history items taking beam slots. (Validation during
    /// training always skips them when the evaluator excludes history.)
    pub beam_skips_history: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            eval: EvalConfig::default(),
            stage: Stage::Test,
            beam_size: 30,
            invalid_users: 1000,
            invalid_k: 10,
            rare_max: 4,
            beam_skips_history: true,
        }
    }
}

/// Metrics of the users whose target falls in one training-frequency bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// `unseen` (never in training), `rare` (1..=rare_max) or `frequent`.
    pub label: String,
    /// Users in the bucket.
    pub users: usize,
    /// Metric name to mean value.
    pub metrics: BTreeMap<String, f64>,
}

/// Result of [`eval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TigerEval {
    /// The core evaluator's report (constrained decoding).
    pub report: EvalReport,
    /// Invalid IDs in the top `invalid_k` with the trie constraint (always 0).
    pub invalid_rate_constrained: f64,
    /// Invalid IDs in the top `invalid_k` without it (diagnostic; the paper: 0.1–1.6%).
    pub invalid_rate_unconstrained: f64,
    /// Users in the invalid-ID diagnostic.
    pub invalid_users: usize,
    /// Metrics by how often the target occurs in the training sequences.
    pub cold_start: Vec<Bucket>,
    /// Beams per user.
    pub beam_size: usize,
    /// Whether the beams skipped each user's history items.
    pub beam_skips_history: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Evaluates `model` on `split` (full ranking over all items, the core evaluator), with
/// the invalid-ID diagnostic and cold-start buckets; writes `eval.json` to `run_dir`.
/// `progress` gets the number of users finished per batch.
pub fn eval(
    model: &Tiger,
    split: &SequenceSplit,
    opts: &EvalOptions,
    run_dir: Option<&Path>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<TigerEval> {
    let start = Instant::now();
    let mut rec = model.clone();
    rec.beam_size = opts.beam_size.max(1);
    rec.constrained = true;
    rec.exclude_history = opts.beam_skips_history && opts.eval.exclude_history;
    let cases = split.cases(opts.stage);
    let cfg = EvalConfig {
        per_user: true,
        ..opts.eval.clone()
    };
    let mut report = evaluate(&rec, &cases, &cfg, None, progress)?;
    let per_user = report.per_user.take().unwrap_or_default();

    let pop = split.train_popularity();
    let mut groups: BTreeMap<&str, Vec<&UserResult>> = BTreeMap::new();
    for r in &per_user {
        let Some(&t) = r.targets.first() else {
            continue;
        };
        let c = pop.get(t as usize).copied().unwrap_or(0.0) as usize;
        let label = if c == 0 {
            "unseen"
        } else if c <= opts.rare_max {
            "rare"
        } else {
            "frequent"
        };
        groups.entry(label).or_default().push(r);
    }
    let cold_start = groups
        .into_iter()
        .map(|(label, ranks)| {
            let mut metrics = BTreeMap::new();
            for &k in &opts.eval.ks {
                let (mut recall, mut ndcg, mut hr) = (0.0, 0.0, 0.0);
                for r in &ranks {
                    let m = r.metrics(k, opts.eval.ties);
                    recall += m.recall;
                    ndcg += m.ndcg;
                    hr += m.hr;
                }
                let n = ranks.len().max(1) as f64;
                metrics.insert(format!("Recall@{k}"), recall / n);
                metrics.insert(format!("NDCG@{k}"), ndcg / n);
                metrics.insert(format!("HR@{k}"), hr / n);
            }
            Bucket {
                label: format!(
                    "{label} ({})",
                    match label {
                        "unseen" => "0 training occurrences".to_string(),
                        "rare" => format!("1-{} training occurrences", opts.rare_max),
                        _ => format!("> {} training occurrences", opts.rare_max),
                    }
                ),
                users: ranks.len(),
                metrics,
            }
        })
        .collect();

    let diag = sample_cases(cases, opts.invalid_users, opts.eval.seed);
    let queries: Vec<Query<'_>> = diag
        .iter()
        .map(|c| Query::new(c.user, &c.history))
        .collect();
    let invalid_rate_constrained = rec.invalid_rate(&queries, opts.invalid_k)?;
    rec.constrained = false;
    let invalid_rate_unconstrained = rec.invalid_rate(&queries, opts.invalid_k)?;

    let out = TigerEval {
        report,
        invalid_rate_constrained,
        invalid_rate_unconstrained,
        invalid_users: queries.len(),
        cold_start,
        beam_size: rec.beam_size,
        beam_skips_history: rec.exclude_history,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(d) = run_dir {
        mkdir(d)?;
        write_atomic(&d.join("eval.json"), &json(&out)?)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// 4. Choosing the model on validation

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
    pub fn validate(&self, train: &TrainConfig) -> Result<()> {
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
    cfg: &RunConfig,
    train_dir: &Path,
    progress: &(dyn Fn(&str, usize) + Sync),
) -> Result<Selection> {
    cfg.select.validate(&cfg.train)?;
    let kept = kept_epochs(train_dir)?;
    let last_epoch = kept.last().map_or(0, |k| k.0);
    let best_dir = checkpoint_dir(&train_dir.join("best"));
    let (best_meta, _) = read_checkpoint(&best_dir, dataset)?;
    let mut candidates = vec![("best".to_string(), best_dir, vec![best_meta.epoch])];
    for &n in &cfg.select.average_last {
        if kept.len() < n {
            return Err(Error::Invalid(format!(
                "select.average_last: {n} epochs to average, but {} kept {} (up to epoch {last_epoch})",
                train_dir.join("epochs").display(),
                kept.len()
            )));
        }
        let window = &kept[kept.len() - n..];
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
    write_atomic(&train_dir.join("selection.json"), &json(&selection)?)?;
    Ok(selection)
}

/// The standard run-folder layout under `root` for a dataset and ID scheme:
/// `root/<dataset>/<scheme>/`.
pub fn run_folder(root: &Path, dataset: &str, scheme: IdScheme) -> PathBuf {
    root.join(dataset).join(scheme.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text columns come out standardised, the collaborative column has mean 0 and
    /// variance `weight²` over covered items, so its share of the variance is `share`;
    /// an uncovered item gets 0 there.
    #[test]
    fn fusion_weights_the_collaborative_part_by_its_share() {
        let text = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![4.0, 40.0],
        ];
        let cf = vec![vec![1.0], vec![-1.0], vec![3.0], vec![0.0]];
        let covered = [true, true, true, false];
        let (f, w) = fuse(&text, &cf, &covered, 0.5, true).unwrap();
        assert!((w - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(f[3][2], 0.0);
        let col = |j: usize, n: usize| -> (f64, f64) {
            let xs: Vec<f64> = f[..n].iter().map(|r| r[j] as f64).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            (
                m,
                xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64,
            )
        };
        for j in 0..2 {
            let (m, v) = col(j, 4);
            assert!(
                m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5,
                "text column {j}: {m} {v}"
            );
        }
        let (m, v) = col(2, 3);
        assert!(
            m.abs() < 1e-6 && (v - 2.0).abs() < 1e-5,
            "collaborative column: {m} {v}"
        );
        // Shares outside [0, 1) are errors.
        assert!(fuse(&text, &cf, &covered, 1.0, true).is_err());
        assert!(fuse(&text, &cf, &[false; 4], 0.5, true).is_err());
    }
}
