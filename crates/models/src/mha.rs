//! The core of multi-head attention, `softmax(scale * q k^T + mask) * dropout` times `v`,
//! as one CPU op with a hand-written backward pass (TIGER's encoder, decoder and
//! cross-attention).
//!
//! Queries, keys and values come in the layout the projections produce, `(B, T, H·hd)`
//! and `(B, S, H·hd)`, and the output has the queries' layout, so no head split,
//! transpose or copy is needed around the op. The `(T, S)` weights of each (row, head)
//! live in a scratch buffer: the backward pass recomputes them and regenerates the
//! dropout masks from the seed, so nothing is stored between the passes. Each batch row
//! is one parallel task that writes only its own rows of the outputs, so results do not
//! depend on the number of threads.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use llmrec_kernels::nn::{contiguous_f32, dropout_mask, exp_in_place, matmul, max_of, with_slice};

/// Attention of queries `(B, T, H·hd)` over keys and values `(B, S, H·hd)`.
///
/// Key `j` of query `i` in batch row `b` is visible when `key_pad[b] <= j` (left padding)
/// and, with `causal` (then `T == S`), `j <= i`. A query that sees no key gets a zero
/// output. Dropout drops attention weights with probability `dropout` and scales the kept
/// ones by `1 / (1 - dropout)`, with masks drawn from `seed` (no dropout without one).
#[derive(Debug, Clone)]
pub(crate) struct Mha {
    /// Number of heads `H`; `hd = D / H`.
    pub heads: usize,
    /// Leading padding keys per batch row; empty means none.
    pub key_pad: Vec<usize>,
    /// Query `i` sees keys `j <= i` only.
    pub causal: bool,
    /// Score scale, usually `1 / sqrt(hd)`.
    pub scale: f32,
    /// Dropout probability on the attention weights.
    pub dropout: f32,
    /// Seed of the dropout masks.
    pub seed: Option<u64>,
}

/// Sizes of one call: queries, keys, width, heads, head size.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    s: usize,
    d: usize,
    h: usize,
    hd: usize,
}

impl Mha {
    fn dims(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<Dims> {
        let (b, t, d) = q.dims3()?;
        let (bk, s, dk) = k.dims3()?;
        if (bk, s, dk) != v.dims3()? || bk != b || dk != d {
            candle_core::bail!("attention: queries {q:?}, keys {k:?} and values {v:?} do not fit");
        }
        if self.heads == 0 || d % self.heads != 0 {
            candle_core::bail!("attention: {} heads do not divide {d}", self.heads);
        }
        if !self.key_pad.is_empty() && self.key_pad.len() != b {
            candle_core::bail!(
                "attention: {} padding counts for {b} rows",
                self.key_pad.len()
            );
        }
        if self.causal && t != s {
            candle_core::bail!("attention: causal needs as many queries as keys ({t} vs {s})");
        }
        Ok(Dims {
            t,
            s,
            d,
            h: self.heads,
            hd: d / self.heads,
        })
    }

    /// The visible keys `lo..hi` of query `i` in batch row `b`.
    fn visible(&self, b: usize, i: usize, s: usize) -> (usize, usize) {
        let lo = self.key_pad.get(b).copied().unwrap_or(0).min(s);
        let hi = if self.causal { (i + 1).min(s) } else { s };
        (lo, hi.max(lo))
    }

    /// Weights `P` (`T x S`, zero outside the visible keys) of head `hh` in batch row `b`
    /// into `p`, and the dropout multipliers into `mk`. `q` and `k` start at the row's
    /// first query and key.
    fn probs(
        &self,
        (q, k): (&[f32], &[f32]),
        dm: Dims,
        (b, hh): (usize, usize),
        p: &mut [f32],
        mk: &mut [f32],
    ) {
        let Dims { t, s, d, hd, .. } = dm;
        let off = hh * hd;
        matmul(
            (t, s, hd),
            p,
            s,
            false,
            (&q[off..], d, 1),
            (&k[off..], 1, d),
        );
        for (i, row) in p.chunks_mut(s).enumerate() {
            let (lo, hi) = self.visible(b, i, s);
            if lo == hi {
                row.fill(0.0);
                continue;
            }
            let vis = &mut row[lo..hi];
            let max = max_of(vis) * self.scale;
            let sum = exp_in_place(vis, self.scale, max);
            let inv = 1.0 / sum;
            vis.iter_mut().for_each(|x| *x *= inv);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
        dropout_mask(self.seed, self.dropout, (b * dm.h + hh) as u64, mk);
    }
}

impl CustomOp3 for Mha {
    fn name(&self) -> &'static str {
        "llmrec-mha"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let Dims { t, s, d, h, hd, .. } = dm;
        let (q, k, v) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let mut out = vec![0f32; q.len()];
        if t * d > 0 && s > 0 {
            out.par_chunks_mut(t * d).enumerate().for_each_init(
                || (vec![0f32; t * s], vec![0f32; t * s]),
                |(p, mk), (b, ob)| {
                    let (qb, kb, vb) = (&q[b * t * d..], &k[b * s * d..], &v[b * s * d..]);
                    for hh in 0..h {
                        self.probs((qb, kb), dm, (b, hh), p, mk);
                        p.iter_mut().zip(mk.iter()).for_each(|(x, m)| *x *= m);
                        let off = hh * hd;
                        matmul(
                            (t, hd, s),
                            &mut ob[off..],
                            d,
                            false,
                            (p, s, 1),
                            (&vb[off..], d, 1),
                        );
                    }
                },
            );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(q.shape(), k.shape(), v.shape())?;
        let Dims { t, s, d, h, hd, .. } = dm;
        let mut dq = vec![0f32; q.elem_count()];
        let mut dk = vec![0f32; k.elem_count()];
        let mut dv = vec![0f32; v.elem_count()];
        if t * d > 0 && s > 0 {
            with_slice(q, |q| {
                with_slice(k, |k| {
                    with_slice(v, |v| {
                        with_slice(grad, |g| {
                            dq.par_chunks_mut(t * d)
                                .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
                                .enumerate()
                                .for_each_init(
                                    || (vec![0f32; t * s], vec![0f32; t * s], vec![0f32; t * s]),
                                    |(p, mk, dp), (b, (dqb, (dkb, dvb)))| {
                                        let (qb, kb, vb) =
                                            (&q[b * t * d..], &k[b * s * d..], &v[b * s * d..]);
                                        let gb = &g[b * t * d..];
                                        for hh in 0..h {
                                            let off = hh * hd;
                                            self.probs((qb, kb), dm, (b, hh), p, mk);
                                            // dV = (P∘M)^T dO, with P∘M in dp for the moment.
                                            dp.iter_mut()
                                                .zip(p.iter().zip(mk.iter()))
                                                .for_each(|(w, (x, m))| *w = x * m);
                                            matmul(
                                                (s, hd, t),
                                                &mut dvb[off..],
                                                d,
                                                false,
                                                (dp, 1, s),
                                                (&gb[off..], d, 1),
                                            );
                                            // d(P∘M) = dO V^T; dP = d(P∘M) ∘ M.
                                            matmul(
                                                (t, s, hd),
                                                dp,
                                                s,
                                                false,
                                                (&gb[off..], d, 1),
                                                (&vb[off..], 1, d),
                                            );
                                            // dScores = scale · P ∘ (dP - rowsum(P ∘ dP)).
                                            for ((pr, mr), dr) in
                                                p.chunks(s).zip(mk.chunks(s)).zip(dp.chunks_mut(s))
                                            {
                                                let mut dot = 0.0;
                                                for j in 0..s {
                                                    dr[j] *= mr[j];
                                                    dot += pr[j] * dr[j];
                                                }
                                                for j in 0..s {
                                                    dr[j] = self.scale * pr[j] * (dr[j] - dot);
                                                }
                                            }
                                            // dQ = dS K; dK = dS^T Q.
                                            matmul(
                                                (t, hd, s),
                                                &mut dqb[off..],
                                                d,
                                                false,
                                                (dp, s, 1),
                                                (&kb[off..], d, 1),
                                            );
                                            matmul(
                                                (s, hd, t),
                                                &mut dkb[off..],
                                                d,
                                                false,
                                                (dp, 1, s),
                                                (&qb[off..], d, 1),
                                            );
                                        }
                                    },
                                );
                            Ok(())
                        })
                    })
                })
            })?;
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use llmrec_core::Rng;

    fn rand(rng: &mut Rng, shape: (usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Gradients (dropout on, padded keys, causal or not) against central differences of
    /// `sum(out * r)`: the masks come from the seed, so the loss is a fixed function.
    #[test]
    fn gradients_match_finite_differences_with_dropout() {
        let mut rng = Rng::new(5);
        for (t, s, causal, pad) in [(3, 3, true, vec![1, 0]), (2, 4, false, vec![2, 0])] {
            let op = Mha {
                heads: 2,
                key_pad: pad,
                causal,
                scale: 0.7,
                dropout: 0.3,
                seed: Some(11),
            };
            let q = Var::from_tensor(&rand(&mut rng, (2, t, 4))).unwrap();
            let k = Var::from_tensor(&rand(&mut rng, (2, s, 4))).unwrap();
            let v = Var::from_tensor(&rand(&mut rng, (2, s, 4))).unwrap();
            let r = rand(&mut rng, (2, t, 4));
            let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f32 {
                let out = q.apply_op3(k, v, op.clone()).unwrap();
                (out * &r).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let out = q.apply_op3(&k, &v, op.clone()).unwrap();
            let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut dropped = 0;
            for which in 0..3 {
                let var = [&q, &k, &v][which];
                let g = grads
                    .get(var)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let x = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, &gi) in g.iter().enumerate() {
                    let eps = 1e-2;
                    let at = |delta: f32| {
                        let mut y = x.clone();
                        y[i] += delta;
                        let y = Tensor::from_vec(y, var.shape(), &Device::Cpu).unwrap();
                        let mut args = [
                            q.as_tensor().clone(),
                            k.as_tensor().clone(),
                            v.as_tensor().clone(),
                        ];
                        args[which] = y;
                        loss(&args[0], &args[1], &args[2])
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    assert!(
                        (fd - gi).abs() < 2e-3,
                        "input {which}, element {i}: {gi} vs {fd}"
                    );
                    if gi == 0.0 {
                        dropped += 1;
                    }
                }
            }
            // Padded keys get no gradient: keys 0..pad of row 0.
            let dk = grads.get(&k).unwrap().to_vec3::<f32>().unwrap();
            assert!(dk[0][0].iter().all(|&x| x == 0.0));
            // Gradients are checked above, so they must not be trivially zero: only
            // padded keys, dropped weights and invisible keys give exact zeros.
            let total = 2 * 4 * (t + 2 * s);
            assert!(
                dropped < total / 2,
                "{dropped} of {total} gradients are zero"
            );
        }
    }

    /// Without dropout the output is the plain softmax attention of each head, and a query
    /// that sees no key gets zeros.
    #[test]
    fn forward_matches_a_direct_computation() {
        let mut rng = Rng::new(9);
        let (t, s) = (2, 3);
        let (q, k, v) = (
            rand(&mut rng, (2, t, 4)),
            rand(&mut rng, (2, s, 4)),
            rand(&mut rng, (2, s, 4)),
        );
        let op = Mha {
            heads: 2,
            key_pad: vec![1, 3],
            causal: false,
            scale: 0.5,
            dropout: 0.0,
            seed: None,
        };
        let out = q.apply_op3(&k, &v, op).unwrap().to_vec3::<f32>().unwrap();
        let (q, k, v) = (
            q.to_vec3::<f32>().unwrap(),
            k.to_vec3::<f32>().unwrap(),
            v.to_vec3::<f32>().unwrap(),
        );
        for i in 0..t {
            for h in 0..2 {
                let cols = h * 2..h * 2 + 2;
                let scores: Vec<f32> = (1..s)
                    .map(|j| 0.5 * cols.clone().map(|c| q[0][i][c] * k[0][j][c]).sum::<f32>())
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for c in cols.clone() {
                    let want: f32 = (1..s).map(|j| e[j - 1] / z * v[0][j][c]).sum();
                    assert!(
                        (out[0][i][c] - want).abs() < 1e-5,
                        "{} vs {want}",
                        out[0][i][c]
                    );
                }
            }
            // Row 1 has all three keys padded.
            assert!(out[1][i].iter().all(|&x| x == 0.0));
        }
    }
}
