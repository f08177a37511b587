//! RQ-VAE (residual-quantised VAE) that turns item text embeddings into Semantic IDs, as
//! in TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", 2023).
//!
//! * **Encoder:** an MLP from the item embedding to a `latent_dim` latent (ReLU between
//!   layers; the paper: 768 → 512 → 256 → 128 → 32 over Sentence-T5 embeddings; here the
//!   input dimension is configurable, 384 for MiniLM).
//! * **Quantizer:** `levels` residual codebooks of `codebook_size` codes. Level `l`
//!   quantises the residual left by levels `0..l` to its nearest code. The codebooks are
//!   initialised by k-means on the first training batch, level by level.
//! * **Decoder:** the mirror MLP. It decodes `z + sg(z_q - z)` (straight-through
//!   estimator, so the reconstruction gradient reaches the encoder).
//! * **Loss:** `MSE(x̂, x) + Σ_l [ MSE(sg(r_l), e_l) + β · MSE(r_l, sg(e_l)) ]`, β = 0.25.
//! * **Collapse:** after every epoch the whole catalogue is quantised; codes no item uses
//!   are reset to random residuals of their level. Usage per level is reported, and
//!   usage under [`RqVaeTrainConfig::min_usage`] on any level marks the run as failed.
//! * **Inputs are standardised** per dimension (zero mean, unit variance) by default:
//!   unit-norm MiniLM vectors (per-dimension variance about 1/384) collapsed to one code
//!   per level without it.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::check;
use llmrec_core::{Error, Result, Rng};
use serde::{Deserialize, Serialize};

use super::kmeans::kmeans;
use crate::semantic_ids::{self, IdScheme, SemanticIds};

/// Shape of the RQ-VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RqVaeConfig {
    /// Input (text embedding) dimension. Default 384 (MiniLM); the paper's Sentence-T5 is 768.
    pub input_dim: usize,
    /// Hidden widths of the encoder MLP; the decoder uses them reversed.
    /// Default `[512, 256, 128]` (the paper's).
    pub hidden: Vec<usize>,
    /// Latent dimension. Default 32 (the paper's).
    pub latent_dim: usize,
    /// Residual quantisation levels. Default 3 (the paper's).
    pub levels: usize,
    /// Codes per level. Default 256 (the paper's).
    pub codebook_size: usize,
    /// Commitment weight β. Default 0.25 (the paper's).
    pub beta: f64,
}

impl Default for RqVaeConfig {
    fn default() -> Self {
        RqVaeConfig {
            input_dim: 384,
            hidden: vec![512, 256, 128],
            latent_dim: 32,
            levels: 3,
            codebook_size: 256,
            beta: 0.25,
        }
    }
}

impl RqVaeConfig {
    /// Checks the values; `prefix` is the dotted config path used in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check::all_positive([
            (format!("{prefix}.input_dim"), self.input_dim),
            (format!("{prefix}.latent_dim"), self.latent_dim),
            (format!("{prefix}.levels"), self.levels),
            (format!("{prefix}.codebook_size"), self.codebook_size),
        ])?;
        if self.codebook_size > u16::MAX as usize {
            return Err(Error::config(
                format!("{prefix}.codebook_size"),
                "must be at most 65535",
            ));
        }
        if self.hidden.contains(&0) {
            return Err(Error::config(
                format!("{prefix}.hidden"),
                "widths must be positive",
            ));
        }
        check::non_negative(format!("{prefix}.beta"), self.beta)
    }
}

/// The result of quantising a batch of latents.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Codes, shape `(N, levels)`, u32.
    pub codes: Tensor,
    /// Sum of the chosen codes, shape `(N, latent_dim)`.
    pub z_q: Tensor,
    /// The residual each level quantised, `levels` tensors of shape `(N, latent_dim)`.
    pub residuals: Vec<Tensor>,
    /// `Σ_l MSE(sg(r_l), e_l)`.
    pub codebook_loss: Tensor,
    /// `Σ_l MSE(r_l, sg(e_l))` (not yet multiplied by β).
    pub commitment_loss: Tensor,
}

/// Output of [`RqVae::forward`].
#[derive(Debug, Clone)]
pub struct Output {
    /// Reconstruction of the input.
    pub recon: Tensor,
    /// The quantisation.
    pub quantized: Quantized,
    /// `MSE(x̂, x)`.
    pub recon_loss: Tensor,
    /// Total loss: reconstruction + codebook + β · commitment.
    pub loss: Tensor,
}

/// The RQ-VAE network.
#[derive(Debug, Clone)]
pub struct RqVae {
    encoder: Vec<Linear>,
    decoder: Vec<Linear>,
    codebooks: Vec<Tensor>,
    cfg: RqVaeConfig,
}

fn mlp(dims: &[usize], vb: VarBuilder) -> candle_core::Result<Vec<Linear>> {
    dims.windows(2)
        .enumerate()
        .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(i.to_string())))
        .collect()
}

fn run_mlp(layers: &[Linear], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut x = x.clone();
    for (i, l) in layers.iter().enumerate() {
        x = l.forward(&x)?;
        if i + 1 < layers.len() {
            x = x.relu()?;
        }
    }
    Ok(x)
}

fn mse(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

impl RqVae {
    /// Builds the network from `vb` (`encoder.{i}`, `decoder.{i}`, `codebooks.{l}`).
    pub fn load(vb: VarBuilder, cfg: &RqVaeConfig) -> candle_core::Result<Self> {
        let mut dims = vec![cfg.input_dim];
        dims.extend(&cfg.hidden);
        dims.push(cfg.latent_dim);
        let encoder = mlp(&dims, vb.pp("encoder"))?;
        dims.reverse();
        let decoder = mlp(&dims, vb.pp("decoder"))?;
        let codebooks = (0..cfg.levels)
            .map(|l| {
                vb.pp("codebooks").get_with_hints(
                    (cfg.codebook_size, cfg.latent_dim),
                    &l.to_string(),
                    candle_nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(RqVae {
            encoder,
            decoder,
            codebooks,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RqVaeConfig {
        &self.cfg
    }

    /// Encodes `(N, input_dim)` inputs to `(N, latent_dim)` latents.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        run_mlp(&self.encoder, x)
    }

    /// Decodes latents to inputs.
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        run_mlp(&self.decoder, z)
    }

    /// Residual quantisation of latents `z`.
    pub fn quantize(&self, z: &Tensor) -> candle_core::Result<Quantized> {
        let mut r = z.clone();
        let mut z_q = z.zeros_like()?;
        let mut codes = Vec::with_capacity(self.codebooks.len());
        let mut residuals = Vec::with_capacity(self.codebooks.len());
        let mut cb_loss = Tensor::zeros((), z.dtype(), z.device())?;
        let mut commit = cb_loss.clone();
        for e in &self.codebooks {
            let c = nearest(&r, e)?;
            let q = e.index_select(&c, 0)?;
            cb_loss = (cb_loss + mse(&r.detach(), &q)?)?;
            commit = (commit + mse(&r, &q.detach())?)?;
            z_q = (z_q + &q)?;
            residuals.push(r.clone());
            r = (r - q.detach())?;
            codes.push(c.unsqueeze(1)?);
        }
        Ok(Quantized {
            codes: Tensor::cat(&codes, 1)?,
            z_q,
            residuals,
            codebook_loss: cb_loss,
            commitment_loss: commit,
        })
    }

    /// Encode, quantise, decode (straight-through) and the loss.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Output> {
        let z = self.encode(x)?;
        let quantized = self.quantize(&z)?;
        let z_st = (&z + (&quantized.z_q - &z)?.detach())?;
        let recon = self.decode(&z_st)?;
        let recon_loss = mse(&recon, x)?;
        let loss = ((&recon_loss + &quantized.codebook_loss)?
            + (&quantized.commitment_loss * self.cfg.beta)?)?;
        Ok(Output {
            recon,
            quantized,
            recon_loss,
            loss,
        })
    }
}

/// Index of the nearest row of `codebook` (K, D) for every row of `r` (N, D).
fn nearest(r: &Tensor, codebook: &Tensor) -> candle_core::Result<Tensor> {
    let r = r.detach();
    let e = codebook.detach();
    let rr = r.sqr()?.sum_keepdim(1)?;
    let ee = e.sqr()?.sum(1)?.unsqueeze(0)?;
    let d = rr
        .broadcast_add(&ee)?
        .broadcast_sub(&(r.matmul(&e.t()?)? * 2.0)?)?;
    d.argmin(D::Minus1)
}

/// Training settings for the RQ-VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RqVaeTrainConfig {
    /// The network.
    pub model: RqVaeConfig,
    /// Passes over the catalogue. Default 200.
    pub epochs: usize,
    /// Items per step. Default 1024 (the paper's).
    pub batch_size: usize,
    /// AdamW learning rate. Default 1e-3 (the paper used Adagrad at 0.4).
    pub lr: f64,
    /// AdamW weight decay. Default 0.
    pub weight_decay: f64,
    /// Seed for initialisation, shuffling, k-means and code resets. Default 42.
    pub seed: u64,
    /// Standardise every input dimension to zero mean and unit variance. Default true.
    pub standardize: bool,
    /// Lloyd iterations of the k-means codebook initialisation (and of each level of
    /// the `rq-kmeans` scheme). Default 25.
    pub kmeans_iters: usize,
    /// Reset codes that no item uses after each epoch. Default true.
    pub reset_dead_codes: bool,
    /// A run whose final usage on any level is below this fraction of the codes has
    /// failed ([`RqVaeReport::failed`]). Default 0.8.
    pub min_usage: f64,
}

impl Default for RqVaeTrainConfig {
    fn default() -> Self {
        RqVaeTrainConfig {
            model: RqVaeConfig::default(),
            epochs: 200,
            batch_size: 1024,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 42,
            standardize: true,
            kmeans_iters: 25,
            reset_dead_codes: true,
            min_usage: 0.8,
        }
    }
}

impl RqVaeTrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.model.validate("rqvae.model")?;
        check::all_positive([
            ("rqvae.epochs", self.epochs),
            ("rqvae.batch_size", self.batch_size),
        ])?;
        check::positive_real("rqvae.lr", self.lr)?;
        check::closed_unit_interval("rqvae.min_usage", self.min_usage)
    }
}

/// One epoch of RQ-VAE training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean total loss over the epoch's steps.
    pub loss: f64,
    /// Mean reconstruction loss.
    pub recon_loss: f64,
    /// Mean codebook loss.
    pub codebook_loss: f64,
    /// Mean commitment loss (before β).
    pub commitment_loss: f64,
    /// Fraction of codes used on each level, over the whole catalogue after the epoch.
    pub usage: Vec<f64>,
    /// Fraction of items whose `levels`-tuple is shared with another item.
    pub collision_rate: f64,
    /// Dead codes reset after this epoch, per level.
    pub reset: Vec<usize>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

/// Summary of an RQ-VAE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RqVaeReport {
    /// Every epoch.
    pub epochs: Vec<EpochStats>,
    /// Final code usage per level.
    pub usage: Vec<f64>,
    /// True when some level's final usage is below `min_usage`: the codebook collapsed.
    pub failed: bool,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// A trained RQ-VAE with its codes for the catalogue.
pub struct Trained {
    /// The network.
    pub model: RqVae,
    /// Its variables (for saving).
    pub varmap: VarMap,
    /// `levels` codes per item (no collision token).
    pub codes: Vec<Vec<u16>>,
    /// The run summary.
    pub report: RqVaeReport,
    /// The config it was trained with.
    pub config: RqVaeTrainConfig,
    /// The input standardisation (when `config.standardize`): new items'
    /// embeddings must go through it before the encoder.
    pub standardization: Option<semantic_ids::Standardization>,
}

impl Trained {
    /// The Semantic-ID table (collision token added).
    pub fn semantic_ids(&self) -> Result<SemanticIds> {
        SemanticIds::from_prefix_codes(
            IdScheme::RqVae,
            &self.codes,
            self.config.model.levels,
            self.config.model.codebook_size,
            self.config.seed,
            serde_json::to_value(&self.config)
                .map_err(|e| Error::Invalid(format!("rqvae config json: {e}")))?,
        )
    }
}

fn err(e: candle_core::Error) -> Error {
    Error::model("rqvae", e)
}

fn codebook_vars(varmap: &VarMap, levels: usize) -> Result<Vec<Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::model("rqvae", "variable map lock poisoned"))?;
    (0..levels)
        .map(|l| {
            data.get(&format!("codebooks.{l}"))
                .cloned()
                .ok_or_else(|| Error::model("rqvae", format!("codebook {l} missing")))
        })
        .collect()
}

/// Trains an RQ-VAE on `embeddings` (one row per item, all catalogue items: items never
/// seen in interactions get codes from their text alone) and quantises the catalogue.
///
/// `progress` is called after every epoch. Runs on `device`. Deterministic for a seed
/// on the CPU.
pub fn train(
    embeddings: &[Vec<f32>],
    cfg: &RqVaeTrainConfig,
    device: &Device,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<Trained> {
    cfg.validate()?;
    let dim = semantic_ids::check_embeddings(embeddings)?;
    if dim != cfg.model.input_dim {
        return Err(Error::config(
            "rqvae.model.input_dim",
            format!(
                "is {}, but the embeddings have dimension {dim}",
                cfg.model.input_dim
            ),
        ));
    }
    let start = Instant::now();
    let standardization = if cfg.standardize {
        Some(semantic_ids::Standardization::fit(embeddings)?)
    } else {
        None
    };
    let x = match &standardization {
        Some(s) => s.apply(embeddings)?,
        None => embeddings.to_vec(),
    };
    let n = x.len();
    let flat: Vec<f32> = x.into_iter().flatten().collect();
    let all = Tensor::from_vec(flat, (n, dim), device).map_err(err)?;

    let mut rng = Rng::new(cfg.seed);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = RqVae::load(vb, &cfg.model).map_err(err)?;
    // candle's initialisers draw from their own generator: reinitialise from our seed.
    crate::init::seeded(&varmap, cfg.seed)?;
    let codebooks = codebook_vars(&varmap, cfg.model.levels)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )
    .map_err(err)?;

    let k = cfg.model.codebook_size;
    let ld = cfg.model.latent_dim;
    let bs = cfg.batch_size.min(n);
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let mut codes: Vec<Vec<u16>> = Vec::new();
    let mut usage = Vec::new();
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        let mut sums = [0f64; 4];
        let mut steps = 0usize;
        for (b, chunk) in order.chunks(bs).enumerate() {
            let idx = Tensor::from_slice(chunk, chunk.len(), device).map_err(err)?;
            let xb = all.index_select(&idx, 0).map_err(err)?;
            if epoch == 1 && b == 0 {
                // k-means initialisation of every level on the first batch.
                let mut r = model.encode(&xb).map_err(err)?.detach();
                for cb in &codebooks {
                    let pts: Vec<f32> = r.flatten_all().and_then(|t| t.to_vec1()).map_err(err)?;
                    let c = kmeans(&pts, ld, k, cfg.kmeans_iters, &mut rng);
                    let c = Tensor::from_vec(c, (k, ld), device).map_err(err)?;
                    cb.set(&c).map_err(err)?;
                    let q = c
                        .index_select(&nearest(&r, &c).map_err(err)?, 0)
                        .map_err(err)?;
                    r = (r - q).map_err(err)?;
                }
            }
            let out = model.forward(&xb).map_err(err)?;
            opt.backward_step(&out.loss).map_err(err)?;
            for (s, t) in sums.iter_mut().zip([
                &out.loss,
                &out.recon_loss,
                &out.quantized.codebook_loss,
                &out.quantized.commitment_loss,
            ]) {
                *s += t.to_scalar::<f32>().map_err(err)? as f64;
            }
            steps += 1;
        }
        // Quantise the catalogue: usage, collisions, dead-code reset.
        let z = model.encode(&all).map_err(err)?;
        let q = model.quantize(&z).map_err(err)?;
        codes = q
            .codes
            .to_vec2::<u32>()
            .map_err(err)?
            .into_iter()
            .map(|r| r.into_iter().map(|c| c as u16).collect())
            .collect();
        usage = semantic_ids::code_usage(&codes, cfg.model.levels, k);
        let collision_rate = {
            let mut seen = std::collections::HashMap::new();
            for c in &codes {
                *seen.entry(c.as_slice()).or_insert(0usize) += 1;
            }
            seen.values().filter(|&&m| m > 1).sum::<usize>() as f64 / n as f64
        };
        let mut reset = vec![0usize; cfg.model.levels];
        if cfg.reset_dead_codes && epoch < cfg.epochs {
            for (l, cb) in codebooks.iter().enumerate() {
                let mut used = vec![false; k];
                for c in &codes {
                    used[c[l] as usize] = true;
                }
                let dead: Vec<usize> = (0..k).filter(|&j| !used[j]).collect();
                if dead.is_empty() {
                    continue;
                }
                let res = q.residuals[l].to_vec2::<f32>().map_err(err)?;
                let mut cur = cb.as_tensor().to_vec2::<f32>().map_err(err)?;
                for &j in &dead {
                    let src = &res[rng.index(n)];
                    for (t, v) in cur[j].iter_mut().enumerate() {
                        *v = src[t] + 0.01 * rng.normal() as f32;
                    }
                }
                reset[l] = dead.len();
                let flat: Vec<f32> = cur.into_iter().flatten().collect();
                cb.set(&Tensor::from_vec(flat, (k, ld), device).map_err(err)?)
                    .map_err(err)?;
            }
        }
        let d = steps.max(1) as f64;
        let stats = EpochStats {
            epoch,
            loss: sums[0] / d,
            recon_loss: sums[1] / d,
            codebook_loss: sums[2] / d,
            commitment_loss: sums[3] / d,
            usage: usage.clone(),
            collision_rate,
            reset,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress(&stats);
        epochs.push(stats);
    }
    let failure = usage
        .iter()
        .enumerate()
        .find(|(_, u)| **u < cfg.min_usage)
        .map(|(l, u)| {
            format!(
                "codebook collapse: level {l} uses {:.1}% of its codes (< {:.0}%)",
                u * 100.0,
                cfg.min_usage * 100.0
            )
        });
    let report = RqVaeReport {
        epochs,
        usage,
        failed: failure.is_some(),
        failure,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Trained {
        model,
        varmap,
        codes,
        report,
        config: cfg.clone(),
        standardization,
    })
}
