//! A BERT encoder forward pass for sentence embeddings on raw f32 buffers.
//!
//! candle's BERT pads a batch to its longest sentence, runs ~15 ops per layer
//! through its own thread pool (whose barrier spinning took 22% of the
//! embedder's time), and multiplies with AVX2 kernels. Here the sentences of
//! a batch are packed without padding (attention only ever looks within a
//! sentence, so padding changes nothing but the work), the linear layers use
//! the AMX kernel in [`crate::amx`] where the CPU has AMX (bf16 tiles, split
//! into hi and lo parts for f32 accuracy) and the AVX-512 kernel in
//! [`crate::gemm512`] otherwise, and the rest is split over the same team of
//! threads. Only what all-MiniLM-L6-v2 uses is supported
//! (absolute positions, exact GELU); anything else falls back to candle.

use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};

use crate::amx::{AmxLinear, Passes};
use crate::gemm512::PackedLinear;
use crate::team::SharedOut;
use crate::team::{Team, part_range, with_team};

/// A linear layer: the f32 AVX-512 packing, and the AMX one where the CPU
/// has AMX.
struct Lin {
    f32: PackedLinear,
    amx: Option<AmxLinear>,
}

impl Lin {
    fn new(w: &[f32], b: &[f32], n: usize, k: usize) -> Option<Lin> {
        Some(Lin {
            f32: PackedLinear::new(w, b, n, k)?,
            amx: AmxLinear::new(w, b, n, k, Passes::Three),
        })
    }

    fn forward(&self, team: &Team<'_>, a: &[f32], m: usize, c: &mut [f32], amx: bool) {
        match (&self.amx, amx) {
            (Some(x), true) => x.forward(team, a, m, c, None),
            _ => self.f32.forward(team, a, m, c),
        }
    }

    /// `gelu(a · Wᵀ + b)`; on AMX the GELU runs as each piece is written.
    fn forward_gelu(&self, team: &Team<'_>, a: &[f32], m: usize, c: &mut [f32], amx: bool) {
        match (&self.amx, amx) {
            (Some(x), true) => x.forward(team, a, m, c, Some(gelu)),
            _ => {
                self.f32.forward(team, a, m, c);
                gelu_rows(team, c, self.f32.n());
            }
        }
    }
}

/// One encoder layer.
struct Layer {
    qkv: Lin,
    out: Lin,
    ln1: (Vec<f32>, Vec<f32>),
    up: Lin,
    down: Lin,
    ln2: (Vec<f32>, Vec<f32>),
}

/// The encoder with its weights packed.
pub struct FastBert {
    word: Vec<f32>,
    pos: Vec<f32>,
    type0: Vec<f32>,
    ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    dim: usize,
    heads: usize,
    ff: usize,
    vocab: usize,
    max_pos: usize,
    eps: f32,
}

fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(shape, name)?.flatten_all()?.to_vec1::<f32>()
}

fn linear(vb: VarBuilder, n: usize, k: usize) -> candle_core::Result<Option<Lin>> {
    let w = get(&vb, &[n, k], "weight")?;
    let b = get(&vb, &[n], "bias")?;
    Ok(Lin::new(&w, &b, n, k))
}

fn norm(vb: VarBuilder, dim: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    Ok((get(&vb, &[dim], "weight")?, get(&vb, &[dim], "bias")?))
}

impl FastBert {
    /// Loads the encoder; `None` where this path does not apply (another
    /// activation or position scheme, no AVX-512, odd sizes).
    pub fn load(vb: &VarBuilder, cfg: &Config) -> candle_core::Result<Option<FastBert>> {
        let (dim, ff, heads) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
        );
        if cfg.hidden_act != HiddenAct::Gelu
            || cfg.position_embedding_type != PositionEmbeddingType::Absolute
            || heads == 0
            || dim % heads != 0
            || !crate::gemm512::available()
        {
            return Ok(None);
        }
        // Some checkpoints prefix every name with the model type.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb.clone()
        } else {
            vb.pp(cfg.model_type.as_deref().unwrap_or("bert"))
        };
        let e = vb.pp("embeddings");
        let word = get(&e, &[cfg.vocab_size, dim], "word_embeddings.weight")?;
        let pos = get(
            &e,
            &[cfg.max_position_embeddings, dim],
            "position_embeddings.weight",
        )?;
        let types = get(
            &e,
            &[cfg.type_vocab_size, dim],
            "token_type_embeddings.weight",
        )?;
        let ln = norm(e.pp("LayerNorm"), dim)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let (mut w, mut b) = (Vec::new(), Vec::new());
            for part in ["query", "key", "value"] {
                w.extend(get(&a.pp("self").pp(part), &[dim, dim], "weight")?);
                b.extend(get(&a.pp("self").pp(part), &[dim], "bias")?);
            }
            let packed = (
                Lin::new(&w, &b, 3 * dim, dim),
                linear(a.pp("output").pp("dense"), dim, dim)?,
                linear(l.pp("intermediate").pp("dense"), ff, dim)?,
                linear(l.pp("output").pp("dense"), dim, ff)?,
            );
            let (Some(qkv), Some(out), Some(up), Some(down)) = packed else {
                return Ok(None);
            };
            layers.push(Layer {
                qkv,
                out,
                ln1: norm(a.pp("output").pp("LayerNorm"), dim)?,
                up,
                down,
                ln2: norm(l.pp("output").pp("LayerNorm"), dim)?,
            });
        }
        Ok(Some(FastBert {
            word,
            pos,
            type0: types[..dim].to_vec(),
            ln,
            layers,
            dim,
            heads,
            ff,
            vocab: cfg.vocab_size,
            max_pos: cfg.max_position_embeddings,
            eps: cfg.layer_norm_eps as f32,
        }))
    }

    /// Whether the linear layers can run on AMX tiles.
    pub fn has_amx(&self) -> bool {
        self.layers.iter().all(|l| {
            l.qkv.amx.is_some() && l.out.amx.is_some() && l.up.amx.is_some() && l.down.amx.is_some()
        })
    }

    /// Mean-pooled, L2-normalized embeddings of token-id sequences; the
    /// linear layers on AMX where `amx` and [`FastBert::has_amx`].
    pub fn embed(
        &self,
        batch: &[&[u32]],
        threads: usize,
        amx: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut out = self.pooled(batch, threads, amx)?;
        for v in &mut out {
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= n);
        }
        Ok(out)
    }

    /// Mean-pooled last hidden states of token-id sequences, not normalized
    /// (what a head fine-tuned on the mean-pooled encoder reads).
    pub fn pooled(
        &self,
        batch: &[&[u32]],
        threads: usize,
        amx: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let d = self.dim;
        let mut offs = Vec::with_capacity(batch.len() + 1);
        offs.push(0usize);
        for s in batch {
            if s.len() > self.max_pos {
                return Err(format!(
                    "{} tokens, more than the model's {} positions",
                    s.len(),
                    self.max_pos
                ));
            }
            offs.push(offs.last().copied().unwrap_or(0) + s.len());
        }
        let m = offs.last().copied().unwrap_or(0);
        let mut x = vec![0f32; m * d];
        for (s, ids) in batch.iter().enumerate() {
            for (p, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(format!(
                        "token id {id} outside the vocabulary ({})",
                        self.vocab
                    ));
                }
                let row = &mut x[(offs[s] + p) * d..(offs[s] + p + 1) * d];
                let (w, ps) = (
                    &self.word[id * d..(id + 1) * d],
                    &self.pos[p * d..(p + 1) * d],
                );
                for (j, v) in row.iter_mut().enumerate() {
                    *v = w[j] + ps[j] + self.type0[j];
                }
            }
        }
        // Work buffers, kept per thread between batches (every value is
        // written before it is read, so they are never cleared).
        thread_local! {
            static BUFS: std::cell::RefCell<[Vec<f32>; 4]> = const {
                std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()])
            };
        }
        BUFS.with(|bufs| {
            let mut bufs = bufs.borrow_mut();
            let [qkv, ctx, o, h] = &mut *bufs;
            for (b, width) in [
                (&mut *qkv, 3 * d),
                (&mut *ctx, d),
                (&mut *o, d),
                (&mut *h, self.ff),
            ] {
                b.resize(m * width, 0.0);
            }
            with_team(threads, |team| {
                layer_norm(team, &mut x, None, &self.ln, self.eps, d);
                for l in &self.layers {
                    l.qkv.forward(team, &x, m, qkv, amx);
                    self.attention(team, qkv, &offs, ctx);
                    l.out.forward(team, ctx, m, o, amx);
                    layer_norm(team, &mut x, Some(o), &l.ln1, self.eps, d);
                    l.up.forward_gelu(team, &x, m, h, amx);
                    l.down.forward(team, h, m, o, amx);
                    layer_norm(team, &mut x, Some(o), &l.ln2, self.eps, d);
                }
            });
        });
        Ok(offs
            .windows(2)
            .map(|w| {
                let mut v = vec![0f32; d];
                for r in w[0]..w[1] {
                    v.iter_mut()
                        .zip(&x[r * d..(r + 1) * d])
                        .for_each(|(a, b)| *a += b);
                }
                let cnt = (w[1] - w[0]).max(1) as f32;
                v.iter_mut().for_each(|a| *a /= cnt);
                v
            })
            .collect())
    }

    /// Self-attention within each sentence, one task per (sentence, head).
    fn attention(&self, team: &Team<'_>, qkv: &[f32], offs: &[usize], ctx: &mut [f32]) {
        let (d, heads) = (self.dim, self.heads);
        let hd = d / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let tasks = (offs.len() - 1) * heads;
        let out = SharedOut::new(ctx);
        team.run(&|part| {
            let (lo, hi) = part_range(tasks, part, team.threads());
            let mut p = Vec::new();
            for t in lo..hi {
                let (s, h) = (t / heads, t % heads);
                let (a, b) = (offs[s], offs[s + 1]);
                let col = |r: usize, which: usize| {
                    let at = r * 3 * d + which * d + h * hd;
                    &qkv[at..at + hd]
                };
                for i in a..b {
                    let q = col(i, 0);
                    p.clear();
                    p.extend((a..b).map(|j| crate::quant::dot(q, col(j, 1)) * scale));
                    let mx = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for v in p.iter_mut() {
                        *v = (*v - mx).exp();
                        sum += *v;
                    }
                    // SAFETY: row `i`, head `h` of `ctx` belongs to this task alone.
                    let y = unsafe { out.slice(i * d + h * hd, hd) };
                    y.fill(0.0);
                    for (j, w) in (a..b).zip(&p) {
                        let w = w / sum;
                        y.iter_mut().zip(col(j, 2)).for_each(|(o, v)| *o += w * v);
                    }
                }
            }
        });
    }
}

/// `x = LayerNorm(x + add)` row by row (rows of `d`), rows split over the team.
fn layer_norm(
    team: &Team<'_>,
    x: &mut [f32],
    add: Option<&[f32]>,
    (w, b): &(Vec<f32>, Vec<f32>),
    eps: f32,
    d: usize,
) {
    let rows = x.len() / d;
    let out = SharedOut::new(x);
    team.run(&|part| {
        let (lo, hi) = part_range(rows, part, team.threads());
        for r in lo..hi {
            // SAFETY: row `r` belongs to this part alone.
            let row = unsafe { out.slice(r * d, d) };
            if let Some(add) = add {
                row.iter_mut()
                    .zip(&add[r * d..(r + 1) * d])
                    .for_each(|(a, b)| *a += b);
            }
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), bb) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * g + bb;
            }
        }
    });
}

/// Exact (erf) GELU in place, rows of `width` split over the team.
fn gelu_rows(team: &Team<'_>, h: &mut [f32], width: usize) {
    let rows = h.len() / width;
    let out = SharedOut::new(h);
    team.run(&|part| {
        let (lo, hi) = part_range(rows, part, team.threads());
        // SAFETY: rows `lo..hi` belong to this part alone.
        let span = unsafe { out.slice(lo * width, (hi - lo) * width) };
        gelu(span);
    });
}

/// `x · Φ(x)` with Φ through [`erf`], vectorized where the CPU allows.
fn gelu(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { gelu_avx512(xs) };
        }
    }
    gelu_plain(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_avx512(xs: &mut [f32]) {
    gelu_plain(xs)
}

#[inline(always)]
fn gelu_plain(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The error function, as `x·P(x²)/Q(x²)` on `[-4, 4]` (clamped outside,
/// where erf is within 2e-8 of ±1): a rational least-squares fit made for
/// this file (max error 3e-8 in exact arithmetic, under 4e-7 in f32). No branch
/// and no call, so loops over it vectorize.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 6] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        0.192_457_63,
        0.055_774_54,
        0.004_219_482,
        0.000_414_607_3,
        6.933_741e-6,
    ];
    const Q: [f32; 6] = [
        0.503_894_7,
        0.117_392_61,
        0.016_292_854,
        0.001_423_994_2,
        7.360_039e-5,
        2.679_9e-7,
    ];
    let x = x.clamp(-4.0, 4.0);
    let z = x * x;
    let p = P[0] + z * (P[1] + z * (P[2] + z * (P[3] + z * (P[4] + z * P[5]))));
    let q = 1.0 + z * (Q[0] + z * (Q[1] + z * (Q[2] + z * (Q[3] + z * (Q[4] + z * Q[5])))));
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 5e-7, "max |erf - libm| = {worst}");
        assert_eq!(erf(f32::INFINITY), erf(4.0));
        let mut g = [-3.0f32, 0.0, 1.0];
        gelu(&mut g);
        let want = |x: f32| 0.5 * x * (1.0 + libm::erff(x / 2f32.sqrt()));
        for (got, x) in g.iter().zip([-3.0f32, 0.0, 1.0]) {
            assert!((got - want(x)).abs() < 1e-6, "gelu({x}) = {got}");
        }
    }
}
