//! LLM rating prediction ("Do LLMs Understand User Preferences?", arXiv 2305.06474):
//! predict the stars a user gives a movie. This module holds the protocol and the
//! collaborative-filtering baselines the LLM methods are set against.
//!
//! - [`protocol`]: the per-user time-ordered split (last 10% test, the 10% before
//!   validation) and RMSE / MAE / AUC;
//! - [`baselines`]: global mean, user and item biases, biased MF (SGD);
//! - [`mlp`]: an MLP over user, movie and genre embeddings (candle);
//! - [`finetune`]: MiniLM with a regression or a 5-class head, trained on texts
//!   of training rows;
//! - [`llm`]: zero- and few-shot LLM prompts with parsed and expected-rating
//!   readouts, on a seeded sample of test rows.
//!
//! Every choice (bias regularisation, MF factors and regularisation, the MF pass)
//! is made on validation; test is computed once, for the chosen settings.

pub mod baselines;
pub mod finetune;
pub mod llm;
pub mod mlp;
pub mod protocol;

use std::time::Instant;

use llmrec_core::{Error, Result};
use llmrec_data::loaders::ExplicitRatings;
use serde::{Deserialize, Serialize};

use baselines::{BiasedMf, Biases, GlobalMean, MfParams, RatingModel};
use llm::LlmRatingConfig;
use mlp::{MlpParams, RatingMlp};
use protocol::{RatingMetrics, RatingSplit, metrics, split};

/// Settings of `llmrec rating baselines` (documented in `configs/rating.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RatingConfig {
    /// Share of each user's ratings held out for test, and again for validation.
    /// Default 0.1.
    pub share: f64,
    /// Regularisations of the bias model tried on validation. Default [1, 5, 10, 25].
    pub bias_regs: Vec<f32>,
    /// Alternations of the bias fit. Default 10.
    pub bias_sweeps: usize,
    /// The MF grid.
    pub mf: MfGrid,
    /// The MLP grid.
    pub mlp: MlpGrid,
    /// Seed of MF's initialisation and row order. Default 42.
    pub seed: u64,
    /// The zero- and few-shot LLM runs (`llmrec rating llm`).
    pub llm: LlmRatingConfig,
    /// The fine-tuned text raters (`llmrec rating finetune`).
    pub finetune: finetune::FinetuneConfig,
}

/// The biased-MF settings tried on validation (every factors × reg pair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfGrid {
    /// Latent sizes. Default [32, 64].
    pub factors: Vec<usize>,
    /// Regularisations. Default [0.02, 0.05].
    pub regs: Vec<f32>,
    /// SGD learning rate. Default 0.01.
    pub lr: f32,
    /// At most this many passes. Default 40.
    pub epochs: usize,
    /// Passes without a lower validation RMSE before stopping. Default 2.
    pub patience: usize,
}

impl Default for RatingConfig {
    fn default() -> Self {
        RatingConfig {
            share: 0.1,
            bias_regs: vec![1.0, 5.0, 10.0, 25.0],
            bias_sweeps: 10,
            mf: MfGrid::default(),
            mlp: MlpGrid::default(),
            seed: 42,
            llm: LlmRatingConfig::default(),
            finetune: finetune::FinetuneConfig::default(),
        }
    }
}

/// The MLP settings tried on validation (every dims × hidden pair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpGrid {
    /// Embedding sizes. Default [32, 64].
    pub dims: Vec<usize>,
    /// Widths of the first hidden layer. Default [64].
    pub hidden: Vec<usize>,
    /// AdamW learning rate. Default 0.001.
    pub lr: f64,
    /// AdamW weight decay. Default 0.0001.
    pub weight_decay: f64,
    /// Rows per step. Default 1024.
    pub batch: usize,
    /// At most this many passes. Default 30.
    pub epochs: usize,
    /// Passes without a lower validation RMSE before stopping. Default 2.
    pub patience: usize,
}

impl Default for MlpGrid {
    fn default() -> Self {
        MlpGrid {
            dims: vec![32, 64],
            hidden: vec![64],
            lr: 0.001,
            weight_decay: 1e-4,
            batch: 1024,
            epochs: 30,
            patience: 2,
        }
    }
}

impl Default for MfGrid {
    fn default() -> Self {
        MfGrid {
            factors: vec![32, 64],
            regs: vec![0.02, 0.05],
            lr: 0.01,
            epochs: 40,
            patience: 2,
        }
    }
}

impl RatingConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(field, msg.to_string()));
        if !(self.share > 0.0 && self.share < 0.5) {
            return bad("share", "must be in (0, 0.5)");
        }
        if self.bias_regs.is_empty() || self.bias_regs.iter().any(|r| !(r.is_finite() && *r >= 0.0))
        {
            return bad("bias_regs", "needs at least one finite, non-negative value");
        }
        if self.bias_sweeps == 0 {
            return bad("bias_sweeps", "must be at least 1");
        }
        if self.mf.factors.is_empty() || self.mf.factors.contains(&0) {
            return bad("mf.factors", "needs at least one positive size");
        }
        if self.mf.regs.is_empty() || self.mf.regs.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
            return bad("mf.regs", "needs at least one finite, non-negative value");
        }
        if !(self.mf.lr.is_finite() && self.mf.lr > 0.0) {
            return bad("mf.lr", "must be positive");
        }
        if self.mf.epochs == 0 || self.mf.patience == 0 {
            return bad("mf.epochs", "epochs and patience must be at least 1");
        }
        if self.mlp.dims.is_empty() || self.mlp.dims.contains(&0) {
            return bad("mlp.dims", "needs at least one positive size");
        }
        if self.mlp.hidden.is_empty() || self.mlp.hidden.contains(&0) {
            return bad("mlp.hidden", "needs at least one positive width");
        }
        if !(self.mlp.lr.is_finite() && self.mlp.lr > 0.0) {
            return bad("mlp.lr", "must be positive");
        }
        if !(self.mlp.weight_decay.is_finite() && self.mlp.weight_decay >= 0.0) {
            return bad("mlp.weight_decay", "must be finite and non-negative");
        }
        if self.mlp.batch == 0 || self.mlp.epochs == 0 || self.mlp.patience == 0 {
            return bad("mlp.batch", "batch, epochs and patience must be at least 1");
        }
        self.llm.validate()?;
        self.finetune.validate()
    }
}

/// One method's row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method.
    pub method: String,
    /// The settings chosen on validation, in words.
    pub chosen: String,
    /// Validation metrics of the chosen settings.
    pub valid: RatingMetrics,
    /// Test metrics, computed once, after the choice.
    pub test: RatingMetrics,
    /// Seconds spent fitting (the whole grid).
    pub seconds: f64,
}

/// What `llmrec rating baselines` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatingReport {
    /// The protocol, in words.
    pub protocol: String,
    /// Training, validation and test rows.
    pub rows: [usize; 3],
    /// Users whose ratings all stay in training (fewer than 3).
    pub short_users: usize,
    /// The settings.
    pub config: RatingConfig,
    /// One row per method.
    pub methods: Vec<MethodResult>,
}

/// A baseline fitted on the training rows, its settings chosen on validation.
pub struct FittedBaseline {
    /// The method.
    pub method: String,
    /// The settings chosen on validation, in words.
    pub chosen: String,
    /// Validation metrics of the chosen settings.
    pub valid: RatingMetrics,
    /// The fitted model.
    pub model: Box<dyn RatingModel + Send + Sync>,
    /// Seconds spent fitting (the whole grid).
    pub seconds: f64,
}

/// Fits every baseline (global mean, biases, biased MF, MLP; genres from `movies`)
/// on `s.train`, choosing each one's settings on `s.valid`. `event` receives a line per fit.
pub fn fit_baselines(
    s: &RatingSplit,
    movies: &std::collections::HashMap<u32, llmrec_data::loaders::Movie>,
    cfg: &RatingConfig,
    event: &mut dyn FnMut(&str),
) -> Result<Vec<FittedBaseline>> {
    cfg.validate()?;
    if s.valid.is_empty() || s.test.is_empty() {
        return Err(Error::Invalid(
            "the split has no validation or test rows".into(),
        ));
    }
    let mut out = Vec::new();
    let finish = |method: &str,
                  chosen: String,
                  model: Box<dyn RatingModel + Send + Sync>,
                  t0: Instant|
     -> Result<FittedBaseline> {
        Ok(FittedBaseline {
            method: method.into(),
            chosen,
            valid: metrics(&s.valid, &model.predict_rows(&s.valid))?,
            model,
            seconds: t0.elapsed().as_secs_f64(),
        })
    };

    let t0 = Instant::now();
    let gm = GlobalMean::fit(&s.train);
    out.push(finish(
        "global mean",
        format!("mean {:.4}", gm.0),
        Box::new(gm),
        t0,
    )?);

    let t0 = Instant::now();
    let mut best: Option<(f64, f32, Biases)> = None;
    for &reg in &cfg.bias_regs {
        let b = Biases::fit(&s.train, reg, cfg.bias_sweeps);
        let v = metrics(&s.valid, &b.predict_rows(&s.valid))?.rmse;
        event(&format!("biases reg {reg}: valid RMSE {v:.4}"));
        if best.as_ref().is_none_or(|(bv, _, _)| v < *bv) {
            best = Some((v, reg, b));
        }
    }
    if let Some((_, reg, b)) = best {
        out.push(finish(
            "user + item biases",
            format!("reg {reg}"),
            Box::new(b),
            t0,
        )?);
    }

    let t0 = Instant::now();
    let mut best: Option<(f64, MfParams, BiasedMf)> = None;
    for &factors in &cfg.mf.factors {
        for &reg in &cfg.mf.regs {
            let prm = MfParams {
                factors,
                reg,
                lr: cfg.mf.lr,
                epochs: cfg.mf.epochs,
                patience: cfg.mf.patience,
                seed: cfg.seed,
            };
            let m = BiasedMf::fit(&s.train, &s.valid, &prm)?;
            event(&format!(
                "MF factors {factors}, reg {reg}: valid RMSE {:.4} at pass {}",
                m.best.1, m.best.0
            ));
            if best.as_ref().is_none_or(|(bv, _, _)| m.best.1 < *bv) {
                best = Some((m.best.1, prm, m));
            }
        }
    }
    if let Some((_, prm, m)) = best {
        let chosen = format!(
            "factors {}, reg {}, lr {}, pass {}",
            prm.factors, prm.reg, prm.lr, m.best.0
        );
        out.push(finish("biased MF (SGD)", chosen, Box::new(m), t0)?);
    }

    let t0 = Instant::now();
    let mut best: Option<(f64, MlpParams, RatingMlp)> = None;
    for &dim in &cfg.mlp.dims {
        for &hidden in &cfg.mlp.hidden {
            let prm = MlpParams {
                dim,
                hidden,
                lr: cfg.mlp.lr,
                weight_decay: cfg.mlp.weight_decay,
                batch: cfg.mlp.batch,
                epochs: cfg.mlp.epochs,
                patience: cfg.mlp.patience,
                seed: cfg.seed,
            };
            let m = RatingMlp::fit(&s.train, &s.valid, movies, &prm)?;
            event(&format!(
                "MLP dim {dim}, hidden {hidden}: valid RMSE {:.4} at pass {}",
                m.best.1, m.best.0
            ));
            if best.as_ref().is_none_or(|(bv, _, _)| m.best.1 < *bv) {
                best = Some((m.best.1, prm, m));
            }
        }
    }
    if let Some((_, prm, m)) = best {
        let chosen = format!(
            "dim {}, hidden {}, lr {}, pass {}",
            prm.dim, prm.hidden, prm.lr, m.best.0
        );
        out.push(finish(
            "MLP (user, movie, genres)",
            chosen,
            Box::new(m),
            t0,
        )?);
    }
    Ok(out)
}

/// The protocol of a rating report, in words.
pub fn protocol_words(share: f64) -> String {
    format!(
        "per user in time order: last {:.0}% of ratings (at least 1) test, the {:.0}% before validation, the rest training; RMSE, MAE, AUC (positive: 4+ stars)",
        share * 100.0,
        share * 100.0
    )
}

/// Fits every baseline on the training rows of `data`'s split, chooses its
/// settings on validation and reads test once. `event` receives a line per fit.
pub fn run_baselines(
    data: &ExplicitRatings,
    cfg: &RatingConfig,
    event: &mut dyn FnMut(&str),
) -> Result<RatingReport> {
    cfg.validate()?;
    let s: RatingSplit = split(data, cfg.share)?;
    let fitted = fit_baselines(&s, &data.movies, cfg, event)?;
    let methods = fitted
        .into_iter()
        .map(|f| {
            Ok(MethodResult {
                test: metrics(&s.test, &f.model.predict_rows(&s.test))?,
                method: f.method,
                chosen: f.chosen,
                valid: f.valid,
                seconds: f.seconds,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RatingReport {
        protocol: protocol_words(cfg.share),
        rows: [s.train.len(), s.valid.len(), s.test.len()],
        short_users: s.short_users,
        config: cfg.clone(),
        methods,
    })
}

/// One row of the LLM comparison: a method and readout on the sampled test rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleResult {
    /// The method.
    pub method: String,
    /// `parsed`, `expected`, or `-` for a baseline.
    pub readout: String,
    /// Metrics on the sampled test rows.
    pub sample: RatingMetrics,
    /// Metrics on every test row (baselines only).
    pub full_test: Option<RatingMetrics>,
    /// Answers without a digit 1–5 (parsed readout only).
    pub parse_failures: Option<usize>,
    /// What the readout's LLM calls cost.
    pub calls: Option<llm::CallStats>,
}

/// What `llmrec rating llm` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmRatingReport {
    /// The protocol, in words.
    pub protocol: String,
    /// Training, validation and test rows.
    pub rows: [usize; 3],
    /// Test rows in the seeded sample.
    pub sample: usize,
    /// `backend:model` of the LLM.
    pub llm: String,
    /// The settings.
    pub config: RatingConfig,
    /// Baselines (settings chosen on validation), then each LLM method and readout.
    pub results: Vec<SampleResult>,
}

/// Zero- and few-shot LLM rating prediction on a seeded sample of test rows, with
/// the baselines (fitted and chosen as in [`run_baselines`]) scored on the same
/// rows. Nothing is chosen on test. `event` receives a line per step,
/// `progress(stage, done, total)` follows the LLM calls.
pub fn run_llm(
    data: &ExplicitRatings,
    cfg: &RatingConfig,
    ctx: &llmrec_llm::LlmContext<'_>,
    event: &mut dyn FnMut(&str),
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<LlmRatingReport> {
    cfg.validate()?;
    let s = split(data, cfg.share)?;
    let fitted = fit_baselines(&s, &data.movies, cfg, event)?;
    let rows = llm::sample_rows(&s.test, cfg.llm.sample, cfg.llm.seed);
    event(&format!(
        "{} of {} test rows sampled (seed {})",
        rows.len(),
        s.test.len(),
        cfg.llm.seed
    ));
    let mut results = Vec::new();
    for f in &fitted {
        results.push(SampleResult {
            method: f.method.clone(),
            readout: "-".into(),
            sample: metrics(&rows, &f.model.predict_rows(&rows))?,
            full_test: Some(metrics(&s.test, &f.model.predict_rows(&s.test))?),
            parse_failures: None,
            calls: None,
        });
    }
    let fallback = GlobalMean::fit(&s.train).0;
    let h = llm::TrainHistories::new(&s.train, cfg.llm.shot_history);
    let mut modes = vec![("zero-shot".to_string(), 0)];
    if cfg.llm.shots > 0 {
        modes.push((format!("{}-shot", cfg.llm.shots), cfg.llm.shots));
    }
    let sampled: std::collections::HashSet<u32> = rows.iter().map(|r| r.user).collect();
    let examples = llm::draw_shots(&h, cfg.llm.shots, &sampled, cfg.llm.seed);
    if examples.len() < cfg.llm.shots {
        return Err(Error::Invalid(format!(
            "only {} users outside the sample can lend a worked example; llm.shots is {}",
            examples.len(),
            cfg.llm.shots
        )));
    }
    for (name, shots) in modes {
        let p = llm::predict(
            ctx,
            data,
            &h,
            &rows,
            &cfg.llm,
            &examples[..shots],
            fallback,
            &|d, t| progress(&name, d, t),
        )?;
        event(&format!(
            "{name}: {} of {} answers parsed; {} + {} calls ({} + {} from the cache), {:.0} s",
            rows.len() - p.parse_failures,
            rows.len(),
            p.generate.calls,
            p.score.calls,
            p.generate.cached,
            p.score.cached,
            p.generate.seconds + p.score.seconds
        ));
        let method = format!("{} LLM", name);
        results.push(SampleResult {
            method: method.clone(),
            readout: "parsed".into(),
            sample: metrics(&rows, &p.parsed)?,
            full_test: None,
            parse_failures: Some(p.parse_failures),
            calls: Some(p.generate.clone()),
        });
        results.push(SampleResult {
            method,
            readout: "expected".into(),
            sample: metrics(&rows, &p.expected)?,
            full_test: None,
            parse_failures: None,
            calls: Some(p.score.clone()),
        });
    }
    Ok(LlmRatingReport {
        protocol: protocol_words(cfg.share),
        rows: [s.train.len(), s.valid.len(), s.test.len()],
        sample: rows.len(),
        llm: format!("{}:{}", ctx.llm.backend(), ctx.llm.model()),
        config: cfg.clone(),
        results,
    })
}
