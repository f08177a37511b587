//! Fine-tuned text models for rating prediction (arXiv 2305.06474, §3.3): a BERT
//! encoder (all-MiniLM-L6-v2, every weight trained) with mean pooling and either a
//! regression head (one output plus the training mean, squared error) or a 5-class
//! head (cross-entropy over 1…5 stars; its prediction is the expected stars under
//! the softmax), trained in candle on texts built from training rows only.
//!
//! A training row's text names the movie first, then the user's training ratings
//! before it, newest first ([`rater_text`]), so truncation at the encoder's length
//! drops the oldest ratings, never the question. [`training_examples`] builds them
//! from the training rows: no validation or test rating reaches a batch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, ParamsAdamW, VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::ExplicitRatings;
use llmrec_kernels::bert::FastBert;
use llmrec_models::TrainEvent;
use llmrec_models::checkpoint::{self, OPTIMIZER_FILE, WEIGHTS_FILE};
use llmrec_models::init::seeded;
use llmrec_models::learner::{
    EpochMeter, EpochTotals, LoopState, Monitor, Resume, Schedule, Slot, Trainee, Validation, fit,
    is_own,
};
use llmrec_models::optim::AdamW;
use serde::{Deserialize, Serialize};

use super::RatingConfig;
use super::llm::{PromptParts, TrainHistories, describe, messages, sample_rows};
use super::protocol::{RatingMetrics, RatingRow, metrics};
use llmrec_llm::Message;

fn merr(e: candle_core::Error) -> Error {
    Error::model("rating text model", e)
}

/// Which head sits on the pooled encoder output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// One output: stars minus the training mean; squared error.
    Regression,
    /// Five outputs, one per star; cross-entropy. Predicts the expected stars.
    Classes,
}

impl Head {
    fn outputs(self) -> usize {
        match self {
            Head::Regression => 1,
            Head::Classes => 5,
        }
    }
}

/// The encoder's text of a row: the movie asked about, then up to `history` of the
/// user's earlier ratings (given oldest first in `earlier`), newest first.
pub fn rater_text(
    data: &ExplicitRatings,
    earlier: &[RatingRow],
    movie: u32,
    history: usize,
) -> String {
    let mut s = format!(
        "Movie: {}. The user's ratings, newest first:",
        describe(data, movie)
    );
    for r in earlier.iter().rev().take(history) {
        s.push_str(&format!(
            " {}: {};",
            describe(data, r.movie),
            r.stars.round() as u8
        ));
    }
    s
}

/// One training example: the row, its text and its stars.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The training row.
    pub row: RatingRow,
    /// [`rater_text`] of the row, from the user's earlier training rows.
    pub text: String,
}

/// A seeded `share` of `train` (all of it at 1.0), in `train`'s order, each row
/// with up to `history` of the user's training rows before it (oldest first).
fn sample_training(
    train: &[RatingRow],
    share: f64,
    history: usize,
    seed: u64,
) -> Result<Vec<(RatingRow, Vec<RatingRow>)>> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(Error::config(
            "finetune.share",
            format!("must be in (0, 1], got {share}"),
        ));
    }
    let h = TrainHistories::new(train, 0);
    let mut idx: Vec<usize> = (0..train.len()).collect();
    Rng::stream(seed, 0x4654).shuffle(&mut idx);
    let n = ((train.len() as f64 * share).round() as usize).clamp(1, train.len().max(1));
    idx.truncate(n.min(train.len()));
    idx.sort_unstable();
    Ok(idx
        .into_iter()
        .map(|i| {
            let row = train[i];
            let own = h.of(row.user);
            let before = own.partition_point(|r| r.position < row.position);
            (row, own[before.saturating_sub(history)..before].to_vec())
        })
        .collect())
}

/// Examples from training rows: a seeded `share` of `train` (all of it at 1.0),
/// each with the user's training ratings before it. Rows in `train` only are
/// read, so held-out ratings never reach a text or a target.
pub fn training_examples(
    data: &ExplicitRatings,
    train: &[RatingRow],
    share: f64,
    history: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    Ok(sample_training(train, share, history, seed)?
        .into_iter()
        .map(|(row, earlier)| Example {
            text: rater_text(data, &earlier, row.movie, history),
            row,
        })
        .collect())
}

/// Chats for LoRA fine-tuning of the local LLM (`llmrec lm finetune`, then
/// `llmrec rating llm --adapter`): a seeded `share` of the training rows, each the
/// zero-shot prompt of [`super::llm::messages`] over the user's `history` training
/// ratings before it, answered by the row's stars as one digit. Only `train` is
/// read.
pub fn sft_chats(
    data: &ExplicitRatings,
    train: &[RatingRow],
    share: f64,
    history: usize,
    seed: u64,
) -> Result<Vec<Vec<Message>>> {
    Ok(sample_training(train, share, history, seed)?
        .into_iter()
        .map(|(row, earlier)| {
            let parts = PromptParts {
                history: earlier,
                shots: Vec::new(),
                question: row,
            };
            let mut chat = messages(data, &parts);
            chat.push(Message::assistant(format!(
                "{}",
                row.stars.round().clamp(1.0, 5.0) as u8
            )));
            chat
        })
        .collect())
}

/// A BERT encoder with a rating head; every weight is a trainable variable.
pub struct TextRater {
    bert: BertModel,
    head: Linear,
    kind: Head,
    mu: f32,
    varmap: VarMap,
    device: Device,
}

impl TextRater {
    /// A rater with `config`'s encoder, the weights seeded by `seed` and then, when
    /// `weights` is given (a BERT `model.safetensors`), the encoder's taken from it.
    /// `mu` is the training mean (the regression head's offset).
    pub fn new(
        config: &Config,
        kind: Head,
        mu: f32,
        seed: u64,
        weights: Option<&Path>,
    ) -> Result<TextRater> {
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let bert = BertModel::load(vb.clone(), config).map_err(merr)?;
        let head = candle_nn::linear(config.hidden_size, kind.outputs(), vb.pp("rating_head"))
            .map_err(merr)?;
        seeded(&varmap, seed)?;
        let rater = TextRater {
            bert,
            head,
            kind,
            mu,
            varmap,
            device,
        };
        if let Some(path) = weights {
            rater.load_weights(path, false)?;
        }
        Ok(rater)
    }

    /// Sets the weights from a safetensors file: the encoder's only (a pre-trained
    /// BERT) or every one, the head's included (a checkpoint).
    pub fn load_weights(&self, path: &Path, with_head: bool) -> Result<()> {
        let file =
            candle_core::safetensors::load(path, &self.device).map_err(|e| Error::Artifact {
                path: path.to_path_buf(),
                message: format!("BERT weights: {e}"),
            })?;
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::model("rating text model", "variable map lock poisoned"))?;
        for (name, var) in data.iter() {
            if !with_head && name.starts_with("rating_head") {
                continue;
            }
            let t = file.get(name).ok_or_else(|| Error::Artifact {
                path: path.to_path_buf(),
                message: format!("no tensor `{name}`"),
            })?;
            if t.shape() != var.shape() {
                return Err(Error::Artifact {
                    path: path.to_path_buf(),
                    message: format!(
                        "`{name}` has shape {:?}, the model {:?}",
                        t.shape(),
                        var.shape()
                    ),
                });
            }
            var.set(t).map_err(merr)?;
        }
        Ok(())
    }

    /// Stars from the head's raw outputs for one text.
    fn stars_of(&self, out: &[f32]) -> f32 {
        match self.kind {
            Head::Regression => (out[0] + self.mu).clamp(1.0, 5.0),
            Head::Classes => {
                let m = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = out.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                e.iter()
                    .enumerate()
                    .map(|(i, p)| (i as f32 + 1.0) * p / z)
                    .sum()
            }
        }
    }

    /// Predicted stars through the packed encoder (`llmrec_kernels::bert`, AVX-512
    /// or AMX) where the CPU has it, else through candle, `batch` texts of similar
    /// length at a time. Both give the same stars to ~1e-4.
    /// `progress(done, total)` follows the texts.
    pub fn predict_fast(
        &self,
        config: &Config,
        ids: &[Vec<u32>],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<f32>> {
        let vb = VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device);
        let fast = FastBert::load(&vb, config).map_err(merr)?;
        let (w, b) = {
            let data = self
                .varmap
                .data()
                .lock()
                .map_err(|_| Error::model("rating text model", "variable map lock poisoned"))?;
            let get = |n: &str| -> Result<Tensor> {
                data.get(n)
                    .map(|v| v.as_tensor().clone())
                    .ok_or_else(|| Error::model("rating text model", format!("no `{n}`")))
            };
            (
                get("rating_head.weight")?.to_vec2::<f32>().map_err(merr)?,
                get("rating_head.bias")?.to_vec1::<f32>().map_err(merr)?,
            )
        };
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut out = vec![0f32; ids.len()];
        let mut done = 0;
        for chunk in order.chunks(batch.max(1)) {
            let stars: Vec<f32> = match &fast {
                Some(f) => {
                    let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
                    let pooled = f
                        .pooled(&seqs, llmrec_kernels::team::threads(), f.has_amx())
                        .map_err(|e| Error::model("rating text model", e))?;
                    pooled
                        .iter()
                        .map(|p| {
                            let o: Vec<f32> = w
                                .iter()
                                .zip(&b)
                                .map(|(row, bias)| {
                                    bias + row.iter().zip(p).map(|(a, x)| a * x).sum::<f32>()
                                })
                                .collect();
                            self.stars_of(&o)
                        })
                        .collect()
                }
                None => {
                    let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
                    self.predict(&seqs)?
                }
            };
            for (&i, s) in chunk.iter().zip(stars) {
                out[i] = s;
            }
            done += chunk.len();
            progress(done, ids.len());
        }
        Ok(out)
    }

    /// The head's raw outputs `(batch, 1 or 5)` for token sequences (padded here).
    pub fn outputs(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let n = ids.len();
        let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; n * len];
        let mut mask = vec![0f32; n * len];
        for (b, seq) in ids.iter().enumerate() {
            flat[b * len..b * len + seq.len()].copy_from_slice(seq);
            mask[b * len..b * len + seq.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let f = || -> candle_core::Result<Tensor> {
            let ids = Tensor::from_vec(flat, (n, len), &self.device)?;
            let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
            let types = ids.zeros_like()?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            let m = mask.unsqueeze(D::Minus1)?;
            let pooled = hidden
                .broadcast_mul(&m)?
                .sum(1)?
                .broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?;
            self.head.forward(&pooled)
        };
        f().map_err(merr)
    }

    /// The training loss of a batch with true `stars`.
    pub fn loss(&self, ids: &[Vec<u32>], stars: &[f32]) -> Result<Tensor> {
        let out = self.outputs(ids)?;
        let n = stars.len();
        let f = || -> candle_core::Result<Tensor> {
            match self.kind {
                Head::Regression => {
                    let y: Vec<f32> = stars.iter().map(|s| s - self.mu).collect();
                    let y = Tensor::from_vec(y, n, &self.device)?;
                    candle_nn::loss::mse(&out.squeeze(D::Minus1)?, &y)
                }
                Head::Classes => {
                    let y: Vec<u32> = stars
                        .iter()
                        .map(|s| (s.round().clamp(1.0, 5.0) as u32) - 1)
                        .collect();
                    let y = Tensor::from_vec(y, n, &self.device)?;
                    candle_nn::loss::cross_entropy(&out, &y)
                }
            }
        };
        f().map_err(merr)
    }

    /// Predicted stars (1–5) for token sequences.
    pub fn predict(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let out = self.outputs(ids)?;
        let f = || -> candle_core::Result<Vec<f32>> {
            match self.kind {
                Head::Regression => Ok(out
                    .squeeze(D::Minus1)?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|x| (x + self.mu).clamp(1.0, 5.0))
                    .collect()),
                Head::Classes => {
                    let p = candle_nn::ops::softmax_last_dim(&out)?;
                    let stars = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &self.device)?;
                    p.broadcast_mul(&stars)?.sum(D::Minus1)?.to_vec1::<f32>()
                }
            }
        };
        f().map_err(merr)
    }

    /// An AdamW over every weight (encoder and head).
    pub fn optimizer(&self, lr: f64, weight_decay: f64) -> Result<AdamW> {
        AdamW::new(
            &self.varmap,
            ParamsAdamW {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
            },
        )
    }
}

/// Settings of the fine-tuned text raters (`[finetune]` in `configs/rating.toml`,
/// `llmrec rating finetune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Heads trained, each separately. Default both: regression and classes.
    pub heads: Vec<Head>,
    /// Shares of the training rows each head is trained on (the data-efficiency
    /// curve). Default [0.01].
    pub shares: Vec<f64>,
    /// The user's earlier training ratings in a text, newest first. Default 5.
    pub history: usize,
    /// Tokens of a text, `[CLS]` and `[SEP]` included (the oldest ratings are cut).
    /// Default 128.
    pub max_tokens: usize,
    /// Texts per optimizer step. Default 16.
    pub batch: usize,
    /// AdamW learning rate (constant). Default 2e-4 (chosen on validation).
    pub lr: f64,
    /// AdamW decoupled weight decay. Default 0.01.
    pub weight_decay: f64,
    /// At most this many passes over the training texts. Default 2.
    pub epochs: usize,
    /// Passes without a lower validation RMSE before stopping. Default 1.
    pub patience: usize,
    /// Validation rows (seeded sample) that choose the pass. Default 2000.
    pub valid_rows: usize,
    /// Test rows scored (seeded sample holding the LLM sample; 0: every test row).
    /// Default 5000.
    pub test_rows: usize,
    /// Seed of the weights of the head, the row order and the samples. Default 42.
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            heads: vec![Head::Regression, Head::Classes],
            shares: vec![0.01],
            history: 5,
            max_tokens: 128,
            batch: 16,
            lr: 2e-4,
            weight_decay: 0.01,
            epochs: 2,
            patience: 1,
            valid_rows: 2000,
            test_rows: 5000,
            seed: 42,
        }
    }
}

impl FinetuneConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(field, msg.to_string()));
        if self.heads.is_empty() {
            return bad("finetune.heads", "needs at least one head");
        }
        if self.shares.is_empty() || self.shares.iter().any(|s| !(*s > 0.0 && *s <= 1.0)) {
            return bad("finetune.shares", "needs shares in (0, 1]");
        }
        if self.max_tokens < 8 || self.max_tokens > llmrec_llm::embedder::MINILM_MAX_TOKENS {
            return bad("finetune.max_tokens", "must be in 8..=256");
        }
        if self.batch == 0 || self.epochs == 0 || self.patience == 0 || self.valid_rows == 0 {
            return bad(
                "finetune.batch",
                "batch, epochs, patience and valid_rows must be at least 1",
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("finetune.lr", "must be positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("finetune.weight_decay", "must be finite and non-negative");
        }
        Ok(())
    }
}

/// Token ids of `texts`, cut to `max_tokens` (the final `[SEP]` kept).
pub fn encode(
    embedder: &llmrec_llm::Embedder,
    texts: &[String],
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(4096) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for mut ids in embedder.tokenize(&refs)? {
            if ids.len() > max_tokens {
                let sep = ids[ids.len() - 1];
                ids.truncate(max_tokens - 1);
                ids.push(sep);
            }
            out.push(ids);
        }
    }
    Ok(out)
}

/// Texts of held-out `rows`: each from the user's training ratings (all earlier).
pub fn heldout_texts(
    data: &ExplicitRatings,
    train: &[RatingRow],
    rows: &[RatingRow],
    history: usize,
) -> Vec<String> {
    let h = TrainHistories::new(train, 0);
    rows.iter()
        .map(|r| {
            let own = h.of(r.user);
            let before = own.partition_point(|x| x.position < r.position);
            rater_text(data, &own[..before], r.movie, history)
        })
        .collect()
}

/// `checkpoint.json` of a rater checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RaterMeta {
    format_version: u32,
    model: String,
    head: Head,
    share: f64,
    history: usize,
    max_tokens: usize,
    seed: u64,
    mu: f32,
    epoch: usize,
    valid: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<LoopState>,
}

const RATER_MODEL: &str = "rating-text";

struct RaterTrainee<'a> {
    rater: TextRater,
    config: &'a Config,
    cfg: &'a FinetuneConfig,
    share: f64,
    ids: &'a [Vec<u32>],
    stars: &'a [f32],
    valid_ids: &'a [Vec<u32>],
    valid_rows: &'a [RatingRow],
}

impl RaterTrainee<'_> {
    fn meta(
        &self,
        epoch: usize,
        valid: &BTreeMap<String, f64>,
        state: Option<LoopState>,
    ) -> RaterMeta {
        RaterMeta {
            format_version: 1,
            model: RATER_MODEL.into(),
            head: self.rater.kind,
            share: self.share,
            history: self.cfg.history,
            max_tokens: self.cfg.max_tokens,
            seed: self.cfg.seed,
            mu: self.rater.mu,
            epoch,
            valid: valid.clone(),
            state,
        }
    }
}

/// Validation metrics as the learner's map.
fn metric_map(m: &RatingMetrics) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("RMSE".to_string(), m.rmse),
        ("MAE".to_string(), m.mae),
        ("AUC".to_string(), m.auc),
    ])
}

impl Trainee for RaterTrainee<'_> {
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        optimizer: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        // Each epoch's order from its own stream: a resumed run draws the same.
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        Rng::stream(self.cfg.seed, 0x5254_0000 + epoch as u64).shuffle(&mut order);
        let steps = order.len().div_ceil(self.cfg.batch);
        let mut meter = EpochMeter::start(epoch, steps, event);
        for (k, chunk) in order.chunks(self.cfg.batch).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| self.ids[i].clone()).collect();
            let stars: Vec<f32> = chunk.iter().map(|&i| self.stars[i]).collect();
            let loss = self.rater.loss(&ids, &stars)?;
            let value = loss.to_scalar::<f32>().map_err(merr)? as f64;
            meter.check("rating text model", k + 1, value)?;
            optimizer.backward_step(&loss)?;
            *step += 1;
            meter.record(k + 1, value, chunk.len(), event);
        }
        Ok(meter.totals())
    }

    fn validation_users(&self) -> usize {
        self.valid_rows.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let pred = self
            .rater
            .predict_fast(self.config, self.valid_ids, 32, &|_, _| {})?;
        Ok(Validation {
            metrics: metric_map(&metrics(self.valid_rows, &pred)?),
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
            _ => (None, None),
        };
        let meta = self.meta(epoch, valid, state);
        checkpoint::write(
            dir,
            &checkpoint::tensors(&self.rater.varmap)?,
            &meta,
            optimizer,
            |_| Ok(()),
        )
    }
}

/// One fine-tuned rater of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetunedResult {
    /// The head.
    pub head: Head,
    /// Share of the training rows trained on.
    pub share: f64,
    /// Training texts.
    pub examples: usize,
    /// The pass kept (chosen on validation RMSE).
    pub best_epoch: usize,
    /// Passes run, and why training stopped.
    pub epochs_run: usize,
    /// Why training stopped.
    pub stopped: String,
    /// Validation metrics of the kept pass (on the validation sample).
    pub valid: RatingMetrics,
    /// Metrics on the scored test rows.
    pub test: RatingMetrics,
    /// Metrics on the LLM comparison's sample of test rows.
    pub llm_sample: RatingMetrics,
    /// Training examples per second (mean over the passes run here).
    pub examples_per_sec: f64,
    /// Seconds of training (this call; a resumed run counts only its own).
    pub train_seconds: f64,
    /// Seconds spent scoring the test rows.
    pub test_seconds: f64,
    /// The run folder.
    pub run_dir: PathBuf,
}

/// A baseline scored on the same rows as the fine-tuned raters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineOnRows {
    /// The method.
    pub method: String,
    /// Its settings, chosen on validation.
    pub chosen: String,
    /// Metrics on the scored test rows.
    pub test: RatingMetrics,
    /// Metrics on the LLM comparison's sample.
    pub llm_sample: RatingMetrics,
}

/// What `llmrec rating finetune` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// The protocol, in words.
    pub protocol: String,
    /// Training, validation and test rows.
    pub rows: [usize; 3],
    /// Test rows scored (a seeded sample, or all).
    pub test_rows: usize,
    /// Rows of the LLM comparison's sample (`llm.sample`, `llm.seed`).
    pub llm_sample: usize,
    /// The encoder fine-tuned.
    pub encoder: String,
    /// The settings.
    pub config: RatingConfig,
    /// The baselines on the same rows.
    pub baselines: Vec<BaselineOnRows>,
    /// One row per head and share.
    pub finetuned: Vec<FinetunedResult>,
}

/// Fine-tunes all-MiniLM-L6-v2 (the folder `encoder_dir`: `config.json`,
/// `tokenizer.json`, `model.safetensors`) with each head on each share of the
/// training rows, each in its own run folder under `out` (resumed from its `last/`
/// when one is there), keeps the pass with the best validation RMSE, and scores it
/// once on the test rows; the baselines are fitted and chosen as in
/// [`super::run_baselines`] and scored on the same rows. `event` receives a line per
/// step, `train` the learner's events, `progress(stage, done, total)` the scoring.
pub fn run_finetune(
    data: &ExplicitRatings,
    cfg: &RatingConfig,
    encoder_dir: &Path,
    out: &Path,
    event: &mut dyn FnMut(&str),
    train: &mut dyn FnMut(&TrainEvent),
    progress: &dyn Fn(&str, usize, usize),
) -> Result<FinetuneReport> {
    cfg.validate()?;
    let ft = &cfg.finetune;
    let s = super::protocol::split(data, cfg.share)?;
    let test = if ft.test_rows == 0 {
        s.test.clone()
    } else {
        sample_rows(&s.test, ft.test_rows, cfg.llm.seed)
    };
    let llm_rows = sample_rows(&s.test, cfg.llm.sample, cfg.llm.seed);
    let valid = sample_rows(&s.valid, ft.valid_rows, ft.seed);
    event(&format!(
        "{} of {} test rows scored, {} of them the LLM sample; {} of {} validation rows choose the pass",
        test.len(),
        s.test.len(),
        llm_rows.len(),
        valid.len(),
        s.valid.len()
    ));
    let mut baselines = Vec::new();
    for f in super::fit_baselines(&s, &data.movies, cfg, event)? {
        baselines.push(BaselineOnRows {
            test: metrics(&test, &f.model.predict_rows(&test))?,
            llm_sample: metrics(&llm_rows, &f.model.predict_rows(&llm_rows))?,
            method: f.method,
            chosen: f.chosen,
        });
    }
    let embedder = llmrec_llm::Embedder::load(encoder_dir, llmrec_llm::MINILM.hf_repo)?;
    let cfg_path = encoder_dir.join("config.json");
    let text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config: Config = serde_json::from_slice(&text)
        .map_err(|e| Error::parse(&cfg_path, 0, format!("BERT config: {e}")))?;
    let weights = encoder_dir.join("model.safetensors");
    let valid_ids = encode(
        &embedder,
        &heldout_texts(data, &s.train, &valid, ft.history),
        ft.max_tokens,
    )?;
    let test_ids = encode(
        &embedder,
        &heldout_texts(data, &s.train, &test, ft.history),
        ft.max_tokens,
    )?;
    // The LLM sample is inside the scored rows when both are samples of one order.
    let test_pos: HashMap<(u32, usize), usize> = test
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.user, r.position), i))
        .collect();
    let mu = super::baselines::GlobalMean::fit(&s.train).0;
    let mut finetuned = Vec::new();
    for &share in &ft.shares {
        let ex = training_examples(data, &s.train, share, ft.history, ft.seed)?;
        let texts: Vec<String> = ex.iter().map(|e| e.text.clone()).collect();
        let ids = encode(&embedder, &texts, ft.max_tokens)?;
        let stars: Vec<f32> = ex.iter().map(|e| e.row.stars).collect();
        for &head in &ft.heads {
            let name = format!(
                "{}-{}pct",
                match head {
                    Head::Regression => "regression",
                    Head::Classes => "classes",
                },
                share * 100.0
            );
            let run_dir = out.join(&name);
            event(&format!(
                "{name}: {} training texts (mean {:.0} tokens)",
                ids.len(),
                ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len().max(1) as f64
            ));
            let rater = TextRater::new(&config, head, mu, ft.seed, Some(&weights))?;
            let mut opt = rater.optimizer(ft.lr, ft.weight_decay)?;
            let last = checkpoint::settled(&run_dir.join("last"));
            let resume = if last.join(checkpoint::META_FILE).exists() {
                let meta: RaterMeta = checkpoint::read_meta(&last, RATER_MODEL, 1..=1)?;
                if meta.head != head
                    || meta.share != share
                    || meta.history != ft.history
                    || meta.max_tokens != ft.max_tokens
                    || meta.seed != ft.seed
                {
                    return Err(checkpoint::artifact(
                        &last,
                        "a checkpoint of other settings (head, share, history, max_tokens or seed); move the run folder away",
                    ));
                }
                let state = meta.state.clone().ok_or_else(|| {
                    checkpoint::artifact(&last, "no loop state: not a `last/` checkpoint")
                })?;
                rater.load_weights(&last.join(WEIGHTS_FILE), true)?;
                opt.load(&last.join(OPTIMIZER_FILE), state.step)?;
                event(&format!("{name}: resuming after epoch {}", meta.epoch));
                Some(Resume {
                    epoch: meta.epoch,
                    state,
                    own: is_own(&last, &run_dir),
                })
            } else {
                None
            };
            let mut trainee = RaterTrainee {
                rater,
                config: &config,
                cfg: ft,
                share,
                ids: &ids,
                stars: &stars,
                valid_ids: &valid_ids,
                valid_rows: &valid,
            };
            let schedule = Schedule {
                epochs: ft.epochs,
                eval_every: 1,
                patience: ft.patience,
                max_seconds: 0.0,
                keep_every: 0,
                monitor: Monitor::loss("RMSE"),
            };
            let t0 = Instant::now();
            let outcome = fit(
                &run_dir,
                &format!("MiniLM {name}"),
                &schedule,
                &mut trainee,
                &mut opt,
                resume,
                train,
            )?;
            let train_seconds = t0.elapsed().as_secs_f64();
            let best = checkpoint::settled(&run_dir.join("best"));
            trainee.rater.load_weights(&best.join(WEIGHTS_FILE), true)?;
            let valid_m = metrics(
                &valid,
                &trainee
                    .rater
                    .predict_fast(&config, &valid_ids, 32, &|_, _| {})?,
            )?;
            let t1 = Instant::now();
            let pred = trainee
                .rater
                .predict_fast(&config, &test_ids, 32, &|d, t| progress(&name, d, t))?;
            let test_seconds = t1.elapsed().as_secs_f64();
            let llm_pred: Vec<f32> = if llm_rows
                .iter()
                .all(|r| test_pos.contains_key(&(r.user, r.position)))
            {
                llm_rows
                    .iter()
                    .map(|r| pred[test_pos[&(r.user, r.position)]])
                    .collect()
            } else {
                let llm_ids = encode(
                    &embedder,
                    &heldout_texts(data, &s.train, &llm_rows, ft.history),
                    ft.max_tokens,
                )?;
                trainee
                    .rater
                    .predict_fast(&config, &llm_ids, 32, &|_, _| {})?
            };
            let examples_per_sec = {
                let ran: Vec<_> = outcome
                    .records
                    .iter()
                    .filter(|r| r.examples_per_sec > 0.0)
                    .collect();
                ran.iter().map(|r| r.examples_per_sec).sum::<f64>() / ran.len().max(1) as f64
            };
            let r = FinetunedResult {
                head,
                share,
                examples: ids.len(),
                best_epoch: outcome.best_epoch,
                epochs_run: outcome.last_epoch,
                stopped: outcome.stop.label().to_string(),
                valid: valid_m,
                test: metrics(&test, &pred)?,
                llm_sample: metrics(&llm_rows, &llm_pred)?,
                examples_per_sec,
                train_seconds,
                test_seconds,
                run_dir: run_dir.clone(),
            };
            event(&format!(
                "{name}: pass {} kept (valid RMSE {:.4}); test RMSE {:.4} on {} rows",
                r.best_epoch, r.valid.rmse, r.test.rmse, r.test.rows
            ));
            finetuned.push(r);
        }
    }
    Ok(FinetuneReport {
        protocol: super::protocol_words(cfg.share),
        rows: [s.train.len(), s.valid.len(), s.test.len()],
        test_rows: test.len(),
        llm_sample: llm_rows.len(),
        encoder: llmrec_llm::MINILM.hf_repo.to_string(),
        config: cfg.clone(),
        baselines,
        finetuned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::bert::HiddenAct;

    fn tiny() -> Config {
        Config {
            vocab_size: 40,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 16,
            ..Config::default()
        }
    }

    /// Ten token sequences, each with its own stars.
    fn set() -> (Vec<Vec<u32>>, Vec<f32>) {
        let mut rng = Rng::new(11);
        let ids: Vec<Vec<u32>> = (0..10)
            .map(|i| (0..3 + i % 4).map(|_| 1 + rng.index(39) as u32).collect())
            .collect();
        let stars: Vec<f32> = (0..10).map(|i| (1 + i % 5) as f32).collect();
        (ids, stars)
    }

    fn overfit(kind: Head) -> (Vec<f32>, Vec<f32>) {
        let (ids, stars) = set();
        let r = TextRater::new(&tiny(), kind, 3.0, 7, None).unwrap();
        let mut opt = r.optimizer(0.01, 0.0).unwrap();
        let first = r.loss(&ids, &stars).unwrap().to_scalar::<f32>().unwrap();
        // Ten random sequences memorised: about 1 s of CPU.
        for _ in 0..1500 {
            let loss = r.loss(&ids, &stars).unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let last = r.loss(&ids, &stars).unwrap().to_scalar::<f32>().unwrap();
        assert!(last < 0.05 * first, "{kind:?}: loss {first} -> {last}");
        let pred = r.predict(&ids).unwrap();
        // The scoring path (packed kernels where the CPU has them) agrees.
        let fast = r.predict_fast(&tiny(), &ids, 4, &|_, _| {}).unwrap();
        for (a, b) in pred.iter().zip(&fast) {
            assert!((a - b).abs() < 1e-3, "{kind:?}: {a} vs {b}");
        }
        (pred, stars)
    }

    #[test]
    fn regression_head_overfits_a_tiny_set() {
        let (pred, stars) = overfit(Head::Regression);
        for (p, s) in pred.iter().zip(&stars) {
            assert!((p - s).abs() < 0.25, "{p} for {s}");
        }
    }

    #[test]
    fn classification_head_overfits_a_tiny_set() {
        let (pred, stars) = overfit(Head::Classes);
        for (p, s) in pred.iter().zip(&stars) {
            assert!((p - s).abs() < 0.5, "expected stars {p} for {s}");
        }
    }
}
