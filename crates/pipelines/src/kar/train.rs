//! Training and scoring of one CTR model through the shared learner: AdamW with a
//! cosine schedule, validation AUC every pass (`best/` and early stopping follow
//! it), and AUC, LogLoss and GAUC of the kept weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::check::{all_positive, non_negative, positive_real};
use llmrec_core::metrics::{auc, gauc, log_loss};
use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::Movie;
use llmrec_models::checkpoint;
use llmrec_models::ctr::{Backbone, CtrBatch, CtrConfig, CtrModel, bce_with_logits};
use llmrec_models::init::seeded;
use llmrec_models::learner::{
    EpochMeter, EpochTotals, Monitor, Schedule, Slot, TrainEvent, Trainee, Validation, fit,
};
use llmrec_models::optim::{AdamW, cosine_decay};
use serde::{Deserialize, Serialize};

use super::protocol::{CtrSample, HISTORY};
use super::vectors::{Side, Tower};

fn merr(e: candle_core::Error) -> Error {
    Error::model("kar ctr", e)
}

/// Training settings of the CTR models (documented in `configs/kar.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak AdamW learning rate (cosine decay to 0 over `epochs`). Default 0.001.
    pub lr: f64,
    /// AdamW weight decay. Default 0.0001.
    pub weight_decay: f64,
    /// Samples per step. Default 1024.
    pub batch: usize,
    /// At most this many passes. Default 8.
    pub epochs: usize,
    /// Passes without a better validation AUC before stopping. Default 2.
    pub patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-3,
            weight_decay: 1e-4,
            batch: 1024,
            epochs: 8,
            patience: 2,
        }
    }
}

impl TrainConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        positive_real("train.lr", self.lr)?;
        non_negative("train.weight_decay", self.weight_decay)?;
        all_positive([
            ("train.batch", self.batch),
            ("train.epochs", self.epochs),
            ("train.patience", self.patience),
        ])
    }
}

/// Dense ids: movies and users from 1 (0 pads), genres from 1 (a movie's first).
pub struct Catalog {
    movie: HashMap<u32, u32>,
    user: HashMap<u32, u32>,
    genre_of: Vec<u32>,
    /// Genre names, by dense id − 1.
    pub genres: Vec<String>,
}

impl Catalog {
    /// From every movie and user id.
    pub fn new(movies: &HashMap<u32, Movie>, users: impl IntoIterator<Item = u32>) -> Catalog {
        let mut ids: Vec<u32> = movies.keys().copied().collect();
        ids.sort_unstable();
        let mut genres: Vec<String> = Vec::new();
        let mut genre_idx: HashMap<String, u32> = HashMap::new();
        let mut genre_of = vec![0u32];
        for m in &ids {
            let g = movies[m].genres.first().cloned().unwrap_or_default();
            let n = genre_idx.len() as u32;
            let gi = *genre_idx.entry(g.clone()).or_insert_with(|| {
                genres.push(g);
                n + 1
            });
            genre_of.push(gi);
        }
        let mut users: Vec<u32> = users.into_iter().collect();
        users.sort_unstable();
        users.dedup();
        Catalog {
            movie: ids
                .iter()
                .enumerate()
                .map(|(i, &m)| (m, i as u32 + 1))
                .collect(),
            user: users
                .iter()
                .enumerate()
                .map(|(i, &u)| (u, i as u32 + 1))
                .collect(),
            genre_of,
            genres,
        }
    }

    /// Movies.
    pub fn items(&self) -> usize {
        self.movie.len()
    }

    fn movie(&self, m: u32) -> u32 {
        if m == 0 {
            0
        } else {
            self.movie.get(&m).copied().unwrap_or(0)
        }
    }

    fn genre(&self, dense: u32) -> u32 {
        self.genre_of[dense as usize]
    }

    /// The towers' vectors as tables `(ids + 1, width)` by dense id (row 0 and ids
    /// without a vector: zeros).
    pub fn tables(&self, towers: &[Tower]) -> Result<Vec<(Side, Tensor)>> {
        towers
            .iter()
            .map(|t| {
                let width = t.vectors.values().next().map_or(0, Vec::len);
                let (index, n) = match t.side {
                    Side::User => (&self.user, self.user.len()),
                    Side::Item => (&self.movie, self.movie.len()),
                };
                let mut data = vec![0f32; (n + 1) * width];
                for (id, v) in &t.vectors {
                    if let Some(&i) = index.get(id) {
                        if v.len() != width {
                            return Err(Error::Invalid(format!(
                                "knowledge vector of {id} has {} values, expected {width}",
                                v.len()
                            )));
                        }
                        data[i as usize * width..(i as usize + 1) * width].copy_from_slice(v);
                    }
                }
                let table = Tensor::from_vec(data, (n + 1, width), &Device::Cpu).map_err(merr)?;
                Ok((t.side, table))
            })
            .collect()
    }

    /// The batch of `samples` (with labels `(batch,)`).
    pub fn batch(
        &self,
        samples: &[&CtrSample],
        tables: &[(Side, Tensor)],
    ) -> Result<(CtrBatch, Tensor)> {
        let dev = Device::Cpu;
        let b = samples.len();
        let items: Vec<u32> = samples.iter().map(|s| self.movie(s.movie)).collect();
        let genres: Vec<u32> = items.iter().map(|&i| self.genre(i)).collect();
        let mut hi = Vec::with_capacity(b * HISTORY);
        let mut hr = Vec::with_capacity(b * HISTORY);
        let mut mask = Vec::with_capacity(b * HISTORY);
        for s in samples {
            for k in 0..HISTORY {
                hi.push(self.movie(s.hist_movies[k]));
                hr.push(s.hist_stars[k] as u32);
                mask.push(if s.hist_movies[k] == 0 { 0f32 } else { 1.0 });
            }
        }
        let hg: Vec<u32> = hi.iter().map(|&i| self.genre(i)).collect();
        let users: Vec<u32> = samples
            .iter()
            .map(|s| self.user.get(&s.user).copied().unwrap_or(0))
            .collect();
        let labels: Vec<f32> = samples.iter().map(|s| s.label).collect();
        let run = || -> candle_core::Result<(CtrBatch, Tensor)> {
            let user_t = Tensor::new(users.as_slice(), &dev)?;
            let item_t = Tensor::new(items.as_slice(), &dev)?;
            let knowledge = tables
                .iter()
                .map(|(side, t)| match side {
                    Side::User => t.index_select(&user_t, 0),
                    Side::Item => t.index_select(&item_t, 0),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok((
                CtrBatch {
                    genre: Tensor::new(genres.as_slice(), &dev)?,
                    item: item_t,
                    hist_item: Tensor::from_vec(hi.clone(), (b, HISTORY), &dev)?,
                    hist_genre: Tensor::from_vec(hg.clone(), (b, HISTORY), &dev)?,
                    hist_rating: Tensor::from_vec(hr.clone(), (b, HISTORY), &dev)?,
                    hist_mask: Tensor::from_vec(mask.clone(), (b, HISTORY), &dev)?,
                    knowledge,
                },
                Tensor::new(labels.as_slice(), &dev)?,
            ))
        };
        run().map_err(merr)
    }
}

/// AUC, LogLoss and GAUC of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtrMetrics {
    /// Global ROC-AUC.
    pub auc: f64,
    /// Mean binary cross-entropy.
    pub logloss: f64,
    /// Per-user AUC weighted by the user's samples (users with both classes).
    pub gauc: f64,
}

/// The metrics of click probabilities `probs` on `samples`.
pub fn ctr_metrics(samples: &[CtrSample], probs: &[f32]) -> Result<CtrMetrics> {
    let labels: Vec<f32> = samples.iter().map(|s| s.label).collect();
    let users: Vec<u32> = samples.iter().map(|s| s.user).collect();
    Ok(CtrMetrics {
        auc: auc(&labels, probs)?,
        logloss: log_loss(&labels, probs)?,
        gauc: gauc(&users, &labels, probs)?.0,
    })
}

/// Click probabilities of `samples` under `model`.
pub fn predict(
    model: &CtrModel,
    catalog: &Catalog,
    tables: &[(Side, Tensor)],
    samples: &[CtrSample],
    batch: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch.max(1)) {
        let refs: Vec<&CtrSample> = chunk.iter().collect();
        let (b, _) = catalog.batch(&refs, tables)?;
        let p = candle_nn::ops::sigmoid(&model.forward(&b)?)
            .and_then(|p| p.to_vec1::<f32>())
            .map_err(merr)?;
        out.extend(p);
    }
    Ok(out)
}

/// `checkpoint.json` of a CTR model.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CtrMeta {
    format_version: u32,
    model: String,
    backbone: Backbone,
    knowledge: String,
    seed: u64,
    epoch: usize,
    valid: BTreeMap<String, f64>,
}

struct CtrTrainee<'a> {
    model: CtrModel,
    varmap: VarMap,
    catalog: &'a Catalog,
    tables: &'a [(Side, Tensor)],
    train: &'a [CtrSample],
    valid: &'a [CtrSample],
    cfg: &'a TrainConfig,
    backbone: Backbone,
    knowledge: &'a str,
    seed: u64,
    total_steps: usize,
}

impl Trainee for CtrTrainee<'_> {
    fn train_epoch(
        &mut self,
        epoch: usize,
        step: &mut usize,
        optimizer: &mut AdamW,
        event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochTotals> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        Rng::stream(self.seed, 0x4b41_0000 + epoch as u64).shuffle(&mut order);
        let steps = order.len().div_ceil(self.cfg.batch);
        let mut meter = EpochMeter::start(epoch, steps, event);
        for (k, chunk) in order.chunks(self.cfg.batch).enumerate() {
            optimizer.set_learning_rate(cosine_decay(self.cfg.lr, *step, self.total_steps));
            let refs: Vec<&CtrSample> = chunk.iter().map(|&i| &self.train[i]).collect();
            let (b, labels) = self.catalog.batch(&refs, self.tables)?;
            let loss = bce_with_logits(&self.model.forward(&b)?, &labels)?;
            let value = loss.to_scalar::<f32>().map_err(merr)? as f64;
            meter.check("kar ctr", k + 1, value)?;
            optimizer.backward_step(&loss)?;
            *step += 1;
            meter.record(k + 1, value, chunk.len(), event);
        }
        Ok(meter.totals())
    }

    fn validation_users(&self) -> usize {
        self.valid.len()
    }

    fn validate(&mut self) -> Result<Validation> {
        let p = predict(&self.model, self.catalog, self.tables, self.valid, 4096)?;
        let m = ctr_metrics(self.valid, &p)?;
        Ok(Validation {
            metrics: BTreeMap::from([
                ("AUC".to_string(), m.auc),
                ("LogLoss".to_string(), m.logloss),
                ("GAUC".to_string(), m.gauc),
            ]),
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
        let meta = CtrMeta {
            format_version: 1,
            model: "kar-ctr".into(),
            backbone: self.backbone,
            knowledge: self.knowledge.to_string(),
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

/// What training one model gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainedCtr {
    /// The pass kept (best validation AUC).
    pub best_epoch: usize,
    /// Passes run.
    pub epochs_run: usize,
    /// Validation metrics of the kept pass.
    pub valid: CtrMetrics,
    /// Test metrics of the kept pass (read once, after the choice).
    pub test: CtrMetrics,
    /// Seconds of training.
    pub train_seconds: f64,
    /// Training samples per second.
    pub samples_per_sec: f64,
}

/// Inputs of [`train_one`].
pub struct CtrRun<'a> {
    /// The model's settings.
    pub model: &'a CtrConfig,
    /// Training settings.
    pub train: &'a TrainConfig,
    /// Dense ids.
    pub catalog: &'a Catalog,
    /// Knowledge tables, in tower order.
    pub tables: &'a [(Side, Tensor)],
    /// Name of the knowledge given (for the checkpoint).
    pub knowledge: &'a str,
    /// Seed of the weights and the sample order.
    pub seed: u64,
}

/// Trains one model into `run_dir` (validation AUC picks the pass), then scores
/// the kept weights on validation and, once, on test.
pub fn train_one(
    run: &CtrRun<'_>,
    train: &[CtrSample],
    valid: &[CtrSample],
    test: &[CtrSample],
    run_dir: &Path,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainedCtr> {
    let cfg = run.train;
    cfg.validate()?;
    let width = run.tables.first().map_or(0, |(_, t)| t.dim(1).unwrap_or(0));
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = CtrModel::new(vb, run.model, run.tables.len(), width)?;
    seeded(&varmap, run.seed)?;
    let mut opt = AdamW::new(
        &varmap,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut trainee = CtrTrainee {
        model,
        varmap,
        catalog: run.catalog,
        tables: run.tables,
        train,
        valid,
        cfg,
        backbone: run.model.backbone,
        knowledge: run.knowledge,
        seed: run.seed,
        total_steps: cfg.epochs * train.len().div_ceil(cfg.batch),
    };
    let schedule = Schedule {
        epochs: cfg.epochs,
        eval_every: 1,
        patience: cfg.patience,
        max_seconds: 0.0,
        keep_every: 0,
        monitor: Monitor {
            metric: "AUC".into(),
            maximize: true,
        },
    };
    let t0 = Instant::now();
    let title = format!("{} ({})", run.model.backbone.name(), run.knowledge);
    let outcome = fit(
        run_dir,
        &title,
        &schedule,
        &mut trainee,
        &mut opt,
        None,
        event,
    )?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let best = checkpoint::settled(&run_dir.join("best"));
    let weights = best.join(checkpoint::WEIGHTS_FILE);
    trainee
        .varmap
        .load(&weights)
        .map_err(|e| checkpoint::artifact(&weights, format!("cannot read weights: {e}")))?;
    let p = predict(&trainee.model, run.catalog, run.tables, valid, 4096)?;
    let valid_m = ctr_metrics(valid, &p)?;
    let p = predict(&trainee.model, run.catalog, run.tables, test, 4096)?;
    let test_m = ctr_metrics(test, &p)?;
    let ran: Vec<f64> = outcome
        .records
        .iter()
        .map(|r| r.examples_per_sec)
        .filter(|x| *x > 0.0)
        .collect();
    Ok(TrainedCtr {
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.last_epoch,
        valid: valid_m,
        test: test_m,
        train_seconds,
        samples_per_sec: ran.iter().sum::<f64>() / ran.len().max(1) as f64,
    })
}
