//! Fused causal self-attention (one op per layer, and one per SASRec block with its
//! projections), with hand-written backward passes.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// Causal self-attention of one layer, fused: for each row `b` of `(B, T, d)` queries,
/// keys and values and each head, `softmax(scale * q k^T + mask) * dropout` times `v`.
/// Keys `j` of query `i` are valid when `pad[b] <= j <= i`; queries at padded positions
/// get a zero output. Only the `T - pad[b]` real positions of a row are computed.
///
/// The `(T, T)` weights never leave a per-row scratch buffer: the backward pass
/// recomputes them, and regenerates the dropout masks from `seed` and the row index, so
/// nothing is stored between the passes.
#[derive(Debug, Clone)]
pub struct FusedAttention {
    /// Attention heads (the model width divides evenly among them).
    pub heads: usize,
    /// Left padding of each row: its first `pad[b]` positions are not real.
    pub pad: Vec<usize>,
    /// Score scale, `1 / sqrt(head size)`.
    pub scale: f32,
    /// Dropout probability on the attention weights.
    pub dropout: f32,
    /// Seed of the dropout masks (`None`: no dropout, evaluation).
    pub seed: Option<u64>,
}

impl FusedAttention {
    fn check(&self, shape: &Shape) -> candle_core::Result<(usize, usize, usize)> {
        let (b, t, d) = shape.dims3()?;
        if self.pad.len() != b || self.pad.iter().any(|&p| p > t) {
            candle_core::bail!(
                "attention: padding {:?} does not fit {b} rows of {t}",
                self.pad
            );
        }
        if self.heads == 0 || d % self.heads != 0 {
            candle_core::bail!("attention: {} heads do not divide {d}", self.heads);
        }
        Ok((b, t, d))
    }

    /// Writes the dropout multipliers (0 or 1/(1-p)) of attention row `row` into `m`.
    fn mask(&self, row: u64, m: &mut [f32]) {
        dropout_mask(self.seed, self.dropout, row, m);
    }

    /// Undropped weights `P` of head `h` in row `b` into `p` (`L x L`, zero above the
    /// diagonal, `L = T - pad[b]`) and dropout multipliers into `mk`. `q` and `k` start at
    /// the row's first real position, with row stride `d`.
    fn probs(
        &self,
        (q, k): (&[f32], &[f32]),
        (b, t, d, h): (usize, usize, usize, usize),
        p: &mut [f32],
        mk: &mut [f32],
    ) {
        let lo = self.pad[b];
        let l = t - lo;
        let dk = d / self.heads;
        matmul(
            (l, l, dk),
            p,
            l,
            false,
            (&q[h * dk..], d, 1),
            (&k[h * dk..], 1, d),
        );
        for i in 0..l {
            let row = &mut p[i * l..(i + 1) * l];
            let max = max_of(&row[..=i]) * self.scale;
            let sum = exp_in_place(&mut row[..=i], self.scale, max);
            let inv = 1.0 / sum;
            for v in &mut row[..=i] {
                *v *= inv;
            }
            row[i + 1..].fill(0.0);
            let mrow = &mut mk[i * l..(i + 1) * l];
            let r = ((b * self.heads + h) * t + lo + i) as u64;
            self.mask(r, &mut mrow[..=i]);
            mrow[i + 1..].fill(0.0);
        }
    }

    /// Attention output of row `b`'s real positions into `out`; `q`, `k`, `v` and `out`
    /// start at the row's first real position, with row stride `d`. `p`, `mk`: scratch
    /// of at least `L * L`.
    fn row_forward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (b, t, d): (usize, usize, usize),
        out: &mut [f32],
        p: &mut [f32],
        mk: &mut [f32],
    ) {
        let l = t - self.pad[b];
        let dk = d / self.heads;
        for h in 0..self.heads {
            self.probs((q, k), (b, t, d, h), p, mk);
            for (x, &m) in p[..l * l].iter_mut().zip(&mk[..l * l]) {
                *x *= m;
            }
            matmul(
                (l, dk, l),
                &mut out[h * dk..],
                d,
                false,
                (&p[..l * l], l, 1),
                (&v[h * dk..], d, 1),
            );
        }
    }

    /// Gradients of [`row_forward`](Self::row_forward) w.r.t. `q`, `k`, `v` given the
    /// output gradient `g` (all laid out like its inputs); overwrites `dq`, `dk`, `dv`.
    #[allow(clippy::too_many_arguments)]
    fn row_backward(
        &self,
        (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
        (b, t, d): (usize, usize, usize),
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
        p: &mut [f32],
        mk: &mut [f32],
        dp: &mut [f32],
    ) {
        let l = t - self.pad[b];
        let hd = d / self.heads;
        for h in 0..self.heads {
            self.probs((q, k), (b, t, d, h), p, mk);
            let off = h * hd;
            // dPd = dO V^T.
            matmul(
                (l, l, hd),
                dp,
                l,
                false,
                (&g[off..], d, 1),
                (&v[off..], 1, d),
            );
            // mk <- Pd = P * M; dp <- dS.
            for i in 0..l {
                let r = i * l..i * l + i + 1;
                let (pr, mr, dr) = (&p[r.clone()], &mut mk[r.clone()], &mut dp[r]);
                let mut s = 0.0;
                for ((&pj, mj), dj) in pr.iter().zip(mr.iter_mut()).zip(dr.iter_mut()) {
                    *dj *= *mj;
                    s += pj * *dj;
                    *mj *= pj;
                }
                for (&pj, dj) in pr.iter().zip(dr.iter_mut()) {
                    *dj = self.scale * pj * (*dj - s);
                }
                dp[i * l + i + 1..(i + 1) * l].fill(0.0);
            }
            // dV = Pd^T dO, dQ = dS K, dK = dS^T Q.
            matmul(
                (l, hd, l),
                &mut dv[off..],
                d,
                false,
                (&mk[..l * l], 1, l),
                (&g[off..], d, 1),
            );
            matmul(
                (l, hd, l),
                &mut dq[off..],
                d,
                false,
                (&dp[..l * l], l, 1),
                (&k[off..], d, 1),
            );
            matmul(
                (l, hd, l),
                &mut dk[off..],
                d,
                false,
                (&dp[..l * l], 1, l),
                (&q[off..], d, 1),
            );
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "llmrec-fused-attention"
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
        let (_, t, d) = self.check(l1.shape())?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            candle_core::bail!("attention: q, k and v shapes differ");
        }
        let (q, k, v) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(t * d)
            .enumerate()
            .with_max_len(ROW_JOB)
            .for_each_init(
                || (vec![0f32; t * t], vec![0f32; t * t]),
                |(p, mk), (b, o)| {
                    let lo = self.pad[b];
                    if lo == t {
                        return;
                    }
                    let s = (b * t + lo) * d..;
                    let (q, k, v) = (&q[s.clone()], &k[s.clone()], &v[s]);
                    self.row_forward((q, k, v), (b, t, d), &mut o[lo * d..], p, mk);
                },
            );
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
        let (_, t, d) = self.check(q.shape())?;
        let n = q.elem_count();
        let (mut dq, mut dkk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        with_slice(q, |q| {
            with_slice(k, |k| {
                with_slice(v, |v| {
                    with_slice(grad, |g| {
                        dq.par_chunks_mut(t * d)
                            .zip(dkk.par_chunks_mut(t * d))
                            .zip(dv.par_chunks_mut(t * d))
                            .enumerate()
                            .with_max_len(ROW_JOB)
                            .for_each_init(
                                || (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; t * t]),
                                |(p, mk, dp), (b, ((dqb, dkb), dvb))| {
                                    let lo = self.pad[b];
                                    if lo == t {
                                        return;
                                    }
                                    let s = (b * t + lo) * d..;
                                    let ins = (&q[s.clone()], &k[s.clone()], &v[s.clone()], &g[s]);
                                    let r = lo * d..;
                                    let outs =
                                        (&mut dqb[r.clone()], &mut dkb[r.clone()], &mut dvb[r]);
                                    self.row_backward(ins, (b, t, d), outs, p, mk, dp);
                                },
                            );
                        Ok(())
                    })
                })
            })
        })?;
        let dev = q.device();
        let shape = q.shape();
        Ok((
            Some(Tensor::from_vec(dq, shape, dev)?),
            Some(Tensor::from_vec(dkk, shape, dev)?),
            Some(Tensor::from_vec(dv, shape, dev)?),
        ))
    }
}

/// The attention half of a SASRec block, fused: for `qin = LN(x)` and `x` `(B, T, d)`
/// and the packed parameters `[Wq, bq, Wk, bk, Wv, bv]` (`d x d` and `d` each),
/// `out = qin + attention(qin Wq^T + bq, x Wk^T + bk, x Wv^T + bv)` (see
/// [`FusedAttention`]; padded queries get `out = qin`). The projections are computed
/// per row for its real positions only and recomputed in the backward pass.
#[derive(Debug, Clone)]
pub struct FusedAttentionBlock(pub FusedAttention);

impl FusedAttentionBlock {
    /// `q`, `k`, `v` of row `b`'s `L` real positions into `L x d` buffers.
    fn project(
        &self,
        (qin, x, w): (&[f32], &[f32], &[f32]),
        (b, t, d): (usize, usize, usize),
        bufs: [&mut [f32]; 3],
    ) {
        let lo = self.0.pad[b];
        let l = t - lo;
        let rows = (b * t + lo) * d..(b * t + t) * d;
        let inputs = [&qin[rows.clone()], &x[rows.clone()], &x[rows]];
        for (j, (buf, input)) in bufs.into_iter().zip(inputs).enumerate() {
            let wj = &w[j * (d * d + d)..];
            let (wm, bias) = (&wj[..d * d], &wj[d * d..d * d + d]);
            for r in buf[..l * d].chunks_mut(d) {
                r.copy_from_slice(bias);
            }
            matmul((l, d, d), buf, d, true, (input, d, 1), (wm, 1, d));
        }
    }
}

impl CustomOp3 for FusedAttentionBlock {
    fn name(&self) -> &'static str {
        "llmrec-fused-attention-block"
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
        let (_, t, d) = self.0.check(l1.shape())?;
        if l2.shape() != l1.shape() || l3.shape().elem_count() != 3 * d * d + 3 * d {
            candle_core::bail!("attention block: shapes do not fit");
        }
        let (qin, x, w) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let mut out = qin.to_vec();
        out.par_chunks_mut(t * d)
            .enumerate()
            .with_max_len(ROW_JOB)
            .for_each_init(
                || (0..6).map(|_| vec![0f32; t * t.max(d)]).collect::<Vec<_>>(),
                |bufs, (b, o)| {
                    let lo = self.0.pad[b];
                    if lo == t {
                        return;
                    }
                    let l = t - lo;
                    let [q, k, v, a, p, mk] = &mut bufs[..] else {
                        unreachable!()
                    };
                    self.project((qin, x, w), (b, t, d), [q, k, v]);
                    self.0.row_forward((q, k, v), (b, t, d), a, p, mk);
                    axpy(1.0, &a[..l * d], &mut o[lo * d..]);
                },
            );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        qin: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, t, d) = self.0.check(qin.shape())?;
        let np = 3 * d * d + 3 * d;
        let mut dqin = vec![0f32; qin.elem_count()];
        let mut dx = vec![0f32; x.elem_count()];
        let dw = with_slice(qin, |qin| {
            with_slice(x, |x| {
                with_slice(w, |w| {
                    with_slice(grad, |g| {
                        // The residual: dqin = g everywhere, plus the attention's share.
                        dqin.copy_from_slice(g);
                        let parts = fold_in_order(
                            dqin.par_chunks_mut(t * d)
                                .zip(dx.par_chunks_mut(t * d))
                                .enumerate(),
                            || {
                                let bufs: Vec<Vec<f32>> =
                                    (0..9).map(|_| vec![0f32; t * t.max(d)]).collect();
                                (vec![0f32; np], bufs)
                            },
                            |(mut dw, mut bufs), (b, (dqb, dxb))| {
                                let lo = self.0.pad[b];
                                if lo == t {
                                    return (dw, bufs);
                                }
                                let l = t - lo;
                                let [q, k, v, gq, gk, gv, p, mk, dp] = &mut bufs[..] else {
                                    unreachable!()
                                };
                                self.project((qin, x, w), (b, t, d), [q, k, v]);
                                let rows = (b * t + lo) * d..(b * t + t) * d;
                                self.0.row_backward(
                                    (q, k, v, &g[rows.clone()]),
                                    (b, t, d),
                                    (gq, gk, gv),
                                    p,
                                    mk,
                                    dp,
                                );
                                let inputs = [&qin[rows.clone()], &x[rows.clone()], &x[rows]];
                                let grads = [&gq[..l * d], &gk[..l * d], &gv[..l * d]];
                                for (j, (gj, input)) in grads.into_iter().zip(inputs).enumerate() {
                                    let wm = &w[j * (d * d + d)..j * (d * d + d) + d * d];
                                    let dwj = &mut dw[j * (d * d + d)..(j + 1) * (d * d + d)];
                                    let (dwm, dbias) = dwj.split_at_mut(d * d);
                                    // dW += g^T input; db += column sums; d input += g W.
                                    matmul((d, d, l), dwm, d, true, (gj, 1, d), (input, d, 1));
                                    for r in gj.chunks(d) {
                                        axpy(1.0, r, dbias);
                                    }
                                    let dst = if j == 0 {
                                        &mut dqb[lo * d..]
                                    } else {
                                        &mut dxb[lo * d..]
                                    };
                                    matmul((l, d, d), dst, d, true, (gj, d, 1), (wm, d, 1));
                                }
                                (dw, bufs)
                            },
                        );
                        Ok(parts
                            .into_iter()
                            .map(|(dw, _)| dw)
                            .reduce(add_grad)
                            .unwrap_or_else(|| vec![0f32; np]))
                    })
                })
            })
        })?;
        let dev = qin.device();
        Ok((
            Some(Tensor::from_vec(dqin, qin.shape(), dev)?),
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}
