//! LLM rating prediction ("Do LLMs Understand User Preferences?", arXiv 2305.06474):
//! predict the stars a user gives a movie. This module holds the protocol and the
//! collaborative-filtering baselines the LLM methods are set against.
//!
//! - [`protocol`]: the per-user time-ordered split (last 10% test, the 10% before
//!   validation) and RMSE / MAE / AUC;
//! - [`baselines`]: global mean, user and item biases, biased MF (SGD).
//!
//! Every choice (bias regularisation, MF factors and regularisation, the MF pass)
//! is made on validation; test is computed once, for the chosen settings.

pub mod baselines;
pub mod protocol;

use std::time::Instant;

use llmrec_core::{Error, Result};
use llmrec_data::loaders::ExplicitRatings;
use serde::{Deserialize, Serialize};

use baselines::{BiasedMf, Biases, GlobalMean, MfParams, RatingModel};
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
    /// Seed of MF's initialisation and row order. Default 42.
    pub seed: u64,
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
            seed: 42,
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
        Ok(())
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

/// Fits every baseline on the training rows of `data`'s split, chooses its
/// settings on validation and reads test once. `event` receives a line per fit.
pub fn run_baselines(
    data: &ExplicitRatings,
    cfg: &RatingConfig,
    event: &mut dyn FnMut(&str),
) -> Result<RatingReport> {
    cfg.validate()?;
    let s: RatingSplit = split(data, cfg.share)?;
    if s.valid.is_empty() || s.test.is_empty() {
        return Err(Error::Invalid(
            "the split has no validation or test rows".into(),
        ));
    }
    let mut methods = Vec::new();
    let finish =
        |method: &str, chosen: String, m: &dyn RatingModel, t0: Instant| -> Result<MethodResult> {
            Ok(MethodResult {
                method: method.into(),
                chosen,
                valid: metrics(&s.valid, &m.predict_rows(&s.valid))?,
                test: metrics(&s.test, &m.predict_rows(&s.test))?,
                seconds: t0.elapsed().as_secs_f64(),
            })
        };

    let t0 = Instant::now();
    let gm = GlobalMean::fit(&s.train);
    methods.push(finish("global mean", format!("mean {:.4}", gm.0), &gm, t0)?);

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
        methods.push(finish("user + item biases", format!("reg {reg}"), &b, t0)?);
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
        methods.push(finish("biased MF (SGD)", chosen, &m, t0)?);
    }
    Ok(RatingReport {
        protocol: format!(
            "per user in time order: last {:.0}% of ratings (at least 1) test, the {:.0}% before validation, the rest training; RMSE, MAE, AUC (positive: 4+ stars)",
            cfg.share * 100.0,
            cfg.share * 100.0
        ),
        rows: [s.train.len(), s.valid.len(), s.test.len()],
        short_users: s.short_users,
        config: cfg.clone(),
        methods,
    })
}
