//! LoRA fine-tuning on the shared learner ([`llmrec_models::learner`]): a round of
//! `eval_every_steps` optimiser steps is the learner's epoch, so every round ends
//! with the validation loss, `best/` (lowest validation loss) and `last/` (adapters,
//! AdamW moments, loop state). A killed run resumes from `last/` and loses at most
//! the steps of the round it was in; every micro-batch's order and dropout are
//! seeded by its index, so the resumed run is the uninterrupted one, bit for bit.
//!
//! Each optimiser step averages the gradients of `grad_accum` micro-batches, clips
//! their norm, and takes an AdamW step at the scheduled rate (linear warm-up, then
//! cosine decay). The loss covers the answer tokens only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use candle_nn::ParamsAdamW;
use llmrec_core::io::write_json;
use llmrec_core::{Error, Result, Rng};
use llmrec_models::checkpoint::{self, OPTIMIZER_FILE, artifact};
use llmrec_models::learner::{
    self, EpochRecord, EpochTotals, Monitor, Resume, Schedule, Slot, Stop, TrainEvent, Trainee,
    Validation,
};
use llmrec_models::optim::AdamW;
use serde::{Deserialize, Serialize};

use super::adapter::{self, ADAPTER_FILE, ADAPTER_VERSION, AdapterMeta, FileRef};
use super::config::FinetuneConfig;
use super::data::{self, DataReport, Example};
use super::model::{LoraModel, TokenBatch};
use crate::local::{DecodeWeights, LocalConfig, LocalLlm};

/// The validation metric: mean cross-entropy per answer token.
pub const VALID_LOSS: &str = "valid_loss";

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("lora", e)
}

/// What [`finetune`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// The base model.
    pub base: FileRef,
    /// The training data.
    pub data: FileRef,
    /// How the data was split and sized.
    pub data_report: DataReport,
    /// Trainable parameters (the adapters).
    pub parameters: usize,
    /// Optimiser steps of the whole schedule.
    pub total_steps: usize,
    /// Every round (the learner's epochs): loss, rate, steps, tokens/s, validation.
    pub rounds: Vec<EpochRecord>,
    /// Round of `best/` (lowest validation loss).
    pub best_round: usize,
    /// Its validation metrics.
    pub best_valid: BTreeMap<String, f64>,
    /// Why training stopped.
    pub stopped: Stop,
    /// Wall time.
    pub seconds: f64,
    /// The folder of the adapter with the lowest validation loss.
    pub best_adapter: PathBuf,
}

/// The LoRA model as the learner trains it.
struct LmTrainee<'a> {
    cfg: &'a FinetuneConfig,
    model: LoraModel,
    train: Vec<Example>,
    valid: Vec<Example>,
    /// Micro-batches of one pass.
    batches_per_pass: usize,
    total_steps: usize,
    /// The current pass and its batches (rebuilt when a step crosses into another).
    pass: Option<(usize, Vec<Vec<usize>>)>,
    meta: AdapterMeta,
}

impl LmTrainee<'_> {
    fn micro_batch(&mut self, m: usize) -> Result<(TokenBatch, usize)> {
        let pass = m / self.batches_per_pass;
        if self.pass.as_ref().is_none_or(|p| p.0 != pass) {
            let mut rng = Rng::stream(self.cfg.seed, pass as u64);
            self.pass = Some((
                pass,
                data::batches(&self.train, self.cfg.batch_size, &mut rng),
            ));
        }
        let rows = self
            .pass
            .as_ref()
            .map(|p| p.1[m % self.batches_per_pass].clone())
            .unwrap_or_default();
        let rows: Vec<(&[u32], usize)> = rows
            .iter()
            .map(|&i| (self.train[i].tokens.as_slice(), self.train[i].answer_start))
            .collect();
        let tokens = rows.iter().map(|r| r.0.len()).sum();
        Ok((TokenBatch::new(&rows)?, tokens))
    }
}

/// Adds `g` into the accumulated gradients of `acc` for every adapter variable.
fn accumulate(acc: &mut Option<GradStore>, g: GradStore, vars: &[Tensor]) -> Result<()> {
    match acc {
        None => *acc = Some(g),
        Some(a) => {
            for v in vars {
                if let Some(x) = g.get(v) {
                    let sum = match a.get(v) {
                        Some(y) => (y + x).map_err(cerr)?,
                        None => x.clone(),
                    };
                    a.insert(v, sum);
                }
            }
        }
    }
    Ok(())
}

/// Scales every adapter gradient by `f`.
fn scale(grads: &mut GradStore, vars: &[Tensor], f: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.get(v) {
            let s = (g * f).map_err(cerr)?;
            grads.insert(v, s);
        }
    }
    Ok(())
}

/// The global norm of the adapters' gradients.
fn grad_norm(grads: &GradStore, vars: &[Tensor]) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g
                .sqr()
                .and_then(|s| s.sum_all())
                .and_then(|s| s.to_scalar::<f32>())
                .map_err(cerr)? as f64;
        }
    }
    Ok(sq.sqrt())
}

impl Trainee for LmTrainee<'_> {
    fn train_epoch(
        &mut self,
        round: usize,
        step: &mut usize,
        opt: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        let cfg = self.cfg;
        let steps = cfg
            .eval_every_steps
            .min(self.total_steps.saturating_sub(*step));
        event(&TrainEvent::EpochStart {
            epoch: round,
            steps,
        });
        let vars: Vec<Tensor> = self
            .model
            .vars()
            .all_vars()
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        let t0 = Instant::now();
        let mut totals = EpochTotals {
            loss_sum: 0.0,
            examples: 0,
        };
        for s in 0..steps {
            let g = *step + 1;
            let mut acc: Option<GradStore> = None;
            let mut step_loss = 0.0;
            for j in 0..cfg.grad_accum {
                let m = (g - 1) * cfg.grad_accum + j;
                let (batch, tokens) = self.micro_batch(m)?;
                let seed = Rng::stream(cfg.seed ^ 0xD20B, m as u64).next_u64();
                let (l, grads) = self.model.loss_and_grads(&batch, Some(seed))?;
                if !l.is_finite() {
                    return Err(Error::model(
                        "lora",
                        format!("loss is {l} at step {g}; lower the learning rate"),
                    ));
                }
                accumulate(&mut acc, grads, &vars)?;
                step_loss += l / cfg.grad_accum as f64;
                totals.loss_sum += l * tokens as f64;
                totals.examples += tokens;
            }
            let mut grads = acc.ok_or_else(|| cerr("no gradients"))?;
            if cfg.grad_accum > 1 {
                scale(&mut grads, &vars, 1.0 / cfg.grad_accum as f64)?;
            }
            if cfg.max_grad_norm > 0.0 {
                let norm = grad_norm(&grads, &vars)?;
                if norm > cfg.max_grad_norm {
                    scale(&mut grads, &vars, cfg.max_grad_norm / norm)?;
                }
            }
            opt.set_learning_rate(cfg.lr_at(g, self.total_steps));
            opt.step(&grads)?;
            *step = g;
            event(&TrainEvent::Step {
                epoch: round,
                step: s + 1,
                loss: step_loss,
                examples_per_sec: totals.examples as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
        }
        Ok(totals)
    }

    fn validation_users(&self) -> usize {
        self.valid.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let (mut sum, mut n) = (0f64, 0usize);
        let source = if self.valid.is_empty() {
            &self.train
        } else {
            &self.valid
        };
        for chunk in source.chunks(self.cfg.batch_size) {
            let rows: Vec<(&[u32], usize)> = chunk
                .iter()
                .map(|e| (e.tokens.as_slice(), e.answer_start))
                .collect();
            let batch = TokenBatch::new(&rows)?;
            let l = self.model.loss(&batch, None)?;
            sum += l * batch.scored() as f64;
            n += batch.scored();
        }
        let loss = sum / n.max(1) as f64;
        Ok(Validation {
            metrics: [
                (VALID_LOSS.to_string(), loss),
                ("valid_ppl".to_string(), loss.exp()),
            ]
            .into_iter()
            .collect(),
        })
    }

    fn save(
        &self,
        dir: &Path,
        slot: Slot<'_>,
        round: usize,
        valid: &BTreeMap<String, f64>,
    ) -> Result<()> {
        let (state, optimizer) = match slot {
            Slot::Last { state, optimizer } => (Some(state.clone()), Some(optimizer)),
            Slot::Best | Slot::Kept => (None, None),
        };
        let tensors: HashMap<String, Tensor> = checkpoint::tensors(self.model.vars())?;
        let meta = AdapterMeta {
            epoch: round,
            valid: valid.clone(),
            state,
            ..self.meta.clone()
        };
        adapter::save(dir, &tensors, &meta, optimizer)
    }
}

/// Fine-tunes LoRA adapters on the base GGUF model `base` with the chat JSONL
/// `data`, writing the run folder `run_dir` (`train_config.json`, the learner's
/// files, `report.json`; adapters in `best/` and `last/`). With `resume`, goes on
/// from a `last/` adapter folder of the same base, data and settings.
pub fn finetune(
    base: &Path,
    data_path: &Path,
    cfg: &FinetuneConfig,
    run_dir: &Path,
    resume: Option<&Path>,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<FinetuneReport> {
    cfg.validate()?;
    let started = Instant::now();
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let tokenizer = LocalLlm::load(
        base,
        LocalConfig {
            decode_weights: DecodeWeights::F32,
            ..Default::default()
        },
    )?;
    let chats = data::read_chats(data_path)?;
    let (train, valid, data_report) = data::prepare(
        &tokenizer,
        &chats,
        cfg.max_tokens,
        cfg.valid_fraction,
        cfg.valid_max,
        cfg.max_examples,
        cfg.seed,
    )?;
    drop(tokenizer);
    let model = LoraModel::load(base, &cfg.lora)?;
    let longest = train
        .iter()
        .chain(&valid)
        .map(|e| e.tokens.len())
        .max()
        .unwrap_or(0);
    if longest > model.max_context() {
        return Err(Error::config(
            "max_tokens",
            format!(
                "an example has {longest} tokens, more than the model's context of {}",
                model.max_context()
            ),
        ));
    }
    let base_ref = FileRef {
        file: base.to_path_buf(),
        sha256: data::file_sha256(base)?,
    };
    let data_ref = FileRef {
        file: data_path.to_path_buf(),
        sha256: data::file_sha256(data_path)?,
    };
    let batches_per_pass = train.len().div_ceil(cfg.batch_size);
    let steps_per_pass = batches_per_pass.div_ceil(cfg.grad_accum);
    let total_steps = steps_per_pass * cfg.epochs;
    let mut opt = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: cfg.lr_at(1, total_steps),
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let parameters: usize = model.vars().all_vars().iter().map(|v| v.elem_count()).sum();
    let meta = AdapterMeta {
        format_version: ADAPTER_VERSION,
        model: "lora".into(),
        base: base_ref.clone(),
        lora: cfg.lora.clone(),
        data: data_ref.clone(),
        data_report: data_report.clone(),
        epoch: 0,
        valid: BTreeMap::new(),
        state: None,
    };
    let resumed = match resume {
        Some(from) => Some(resume_from(from, run_dir, &meta, &model, &mut opt)?),
        None => None,
    };
    write_json(&run_dir.join("train_config.json"), cfg)?;
    write_json(&run_dir.join("data_report.json"), &data_report)?;
    let mut trainee = LmTrainee {
        cfg,
        model,
        train,
        valid,
        batches_per_pass,
        total_steps,
        pass: None,
        meta,
    };
    let schedule = Schedule {
        epochs: total_steps.div_ceil(cfg.eval_every_steps),
        eval_every: 1,
        patience: cfg.patience,
        max_seconds: cfg.max_seconds,
        keep_every: 0,
        monitor: Monitor::loss(VALID_LOSS),
    };
    let out = learner::fit(
        run_dir,
        "LoRA fine-tuning",
        &schedule,
        &mut trainee,
        &mut opt,
        resumed,
        event,
    )?;
    let report = FinetuneReport {
        base: base_ref,
        data: data_ref,
        data_report,
        parameters,
        total_steps,
        rounds: out.records,
        best_round: out.best_epoch,
        best_valid: out.best_valid,
        stopped: out.stop,
        seconds: started.elapsed().as_secs_f64(),
        best_adapter: run_dir.join("best"),
    };
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(report)
}

/// Loads the adapters and AdamW moments of the `last/` folder `from` after checking
/// that it was trained on the same base, data and LoRA settings.
fn resume_from(
    from: &Path,
    run_dir: &Path,
    meta: &AdapterMeta,
    model: &LoraModel,
    opt: &mut AdamW,
) -> Result<Resume> {
    let dir = checkpoint::settled(from);
    let saved: AdapterMeta =
        checkpoint::read_meta(&dir, "lora", ADAPTER_VERSION..=ADAPTER_VERSION)?;
    let path = dir.join(checkpoint::META_FILE);
    let Some(state) = saved.state else {
        return Err(artifact(
            &path,
            "no training state: resume from a run's `last/` folder, not `best/`",
        ));
    };
    for (what, same) in [
        ("base model", saved.base.sha256 == meta.base.sha256),
        ("training data", saved.data.sha256 == meta.data.sha256),
        ("LoRA settings", saved.lora == meta.lora),
    ] {
        if !same {
            return Err(artifact(
                &path,
                format!("the {what} differs from this run's; cannot resume"),
            ));
        }
    }
    let w = dir.join(ADAPTER_FILE);
    let tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu)
        .map_err(|e| artifact(&w, format!("cannot read the adapter: {e}")))?;
    let vars = model
        .vars()
        .data()
        .lock()
        .map_err(|_| cerr("variable map lock poisoned"))?;
    for (name, var) in vars.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| artifact(&w, format!("no tensor `{name}`")))?;
        var.set(t).map_err(|e| artifact(&w, e.to_string()))?;
    }
    drop(vars);
    opt.load(&dir.join(OPTIMIZER_FILE), state.step)?;
    Ok(Resume {
        epoch: saved.epoch,
        state,
        own: learner::is_own(from, run_dir),
    })
}
