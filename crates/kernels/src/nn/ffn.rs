//! The fused feed-forward half of a SASRec block.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use llmrec_core::Rng;
use rayon::prelude::*;

use super::*;

/// The feed-forward half of a SASRec block, fused: for `fin` `(B, T, d)` and the packed
/// parameters `[W1 (d x d), b1 (d), W2 (d x d), b2 (d)]`,
/// `out = (fin + dropout(relu(fin W1^T + b1)) W2^T + b2 dropped) * keep`,
/// where `keep` is 0 on the `pad[b]` padded positions at the start of row `b` (which are
/// skipped entirely). Dropout masks come from `Rng::stream(seed, row)` per position and are
/// regenerated in the backward pass, which also recomputes the hidden layer.
#[derive(Debug, Clone)]
pub struct FusedFfn {
    /// Left padding of each row: its first `pad[b]` positions are skipped.
    pub pad: Vec<usize>,
    /// Dropout probability on the hidden layer and the output.
    pub dropout: f32,
    /// Seed of the dropout masks (`None`: no dropout, evaluation).
    pub seed: Option<u64>,
}

impl FusedFfn {
    /// Dropout multipliers of position `row` for the hidden layer and the output.
    fn masks(&self, row: usize, m1: &mut [f32], m2: &mut [f32]) {
        match self.seed {
            Some(seed) if self.dropout > 0.0 => {
                let mut rng = Rng::stream(seed, row as u64);
                fill_dropout_mask(&mut rng, self.dropout, m1);
                fill_dropout_mask(&mut rng, self.dropout, m2);
            }
            _ => {
                m1.fill(1.0);
                m2.fill(1.0);
            }
        }
    }

    fn check(&self, x: &Shape, w: &Shape) -> candle_core::Result<(usize, usize, usize)> {
        let (b, t, d) = x.dims3()?;
        if w.elem_count() != 2 * d * d + 2 * d {
            candle_core::bail!("ffn: {} packed parameters for hidden {d}", w.elem_count());
        }
        if self.pad.len() != b || self.pad.iter().any(|&p| p > t) {
            candle_core::bail!("ffn: padding {:?} does not fit {b} rows of {t}", self.pad);
        }
        Ok((b, t, d))
    }

    /// Hidden layer of row `b`'s `L` real positions: `h1` (pre-activation) and
    /// `a1 = relu(h1) * m1`; masks into `m1`, `m2`.
    #[allow(clippy::too_many_arguments)]
    fn hidden(
        &self,
        fin: &[f32],
        w: &[f32],
        (b, t, d): (usize, usize, usize),
        h1: &mut [f32],
        a1: &mut [f32],
        m1: &mut [f32],
        m2: &mut [f32],
    ) {
        let lo = self.pad[b];
        let l = t - lo;
        let (w1, rest) = w.split_at(d * d);
        let b1 = &rest[..d];
        let fb = &fin[(b * t + lo) * d..(b * t + t) * d];
        for r in h1[..l * d].chunks_mut(d) {
            r.copy_from_slice(b1);
        }
        matmul((l, d, d), h1, d, true, (fb, d, 1), (w1, 1, d));
        for i in 0..l {
            let s = i * d..(i + 1) * d;
            self.masks(b * t + lo + i, &mut m1[s.clone()], &mut m2[s.clone()]);
            for ((a, &h), &m) in a1[s.clone()].iter_mut().zip(&h1[s.clone()]).zip(&m1[s]) {
                *a = h.max(0.0) * m;
            }
        }
    }
}

impl candle_core::CustomOp2 for FusedFfn {
    fn name(&self) -> &'static str {
        "llmrec-fused-ffn"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, t, d) = self.check(l1.shape(), l2.shape())?;
        let fin = contiguous_f32(s1, l1)?;
        let w = contiguous_f32(s2, l2)?;
        let w2 = &w[d * d + d..2 * d * d + d];
        let b2 = &w[2 * d * d + d..];
        let mut out = vec![0f32; fin.len()];
        out.par_chunks_mut(t * d)
            .enumerate()
            .with_max_len(ROW_JOB)
            .for_each_init(
                || (0..4).map(|_| vec![0f32; t * d]).collect::<Vec<_>>(),
                |bufs, (b, o)| {
                    let lo = self.pad[b];
                    let l = t - lo;
                    if l == 0 {
                        return;
                    }
                    let [h1, a1, m1, m2] = &mut bufs[..] else {
                        unreachable!()
                    };
                    self.hidden(fin, w, (b, t, d), h1, a1, m1, m2);
                    let ob = &mut o[lo * d..];
                    for r in ob.chunks_mut(d) {
                        r.copy_from_slice(b2);
                    }
                    matmul((l, d, d), ob, d, true, (&a1[..l * d], d, 1), (w2, 1, d));
                    let fb = &fin[(b * t + lo) * d..(b * t + t) * d];
                    for ((y, &f), &m) in ob.iter_mut().zip(fb).zip(&m2[..l * d]) {
                        *y = f + *y * m;
                    }
                },
            );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        fin: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, t, d) = self.check(fin.shape(), w.shape())?;
        let np = 2 * d * d + 2 * d;
        let mut dfin = vec![0f32; fin.elem_count()];
        let dw = with_slice(fin, |fin| {
            with_slice(w, |w| {
                with_slice(grad, |g| {
                    let w1 = &w[..d * d];
                    let w2 = &w[d * d + d..2 * d * d + d];
                    let parts = fold_in_order(
                        dfin.par_chunks_mut(t * d).enumerate(),
                        || {
                            let bufs: Vec<Vec<f32>> = (0..5).map(|_| vec![0f32; t * d]).collect();
                            (vec![0f32; np], bufs)
                        },
                        |(mut dw, mut bufs), (b, dfb)| {
                            let lo = self.pad[b];
                            let l = t - lo;
                            if l == 0 {
                                return (dw, bufs);
                            }
                            let [h1, a1, m1, m2, dh] = &mut bufs[..] else {
                                unreachable!()
                            };
                            self.hidden(fin, w, (b, t, d), h1, a1, m1, m2);
                            let rows = (b * t + lo) * d..(b * t + t) * d;
                            let (fb, gb) = (&fin[rows.clone()], &g[rows]);
                            let (dw1, rest) = dw.split_at_mut(d * d);
                            let (db1, rest) = rest.split_at_mut(d);
                            let (dw2, db2) = rest.split_at_mut(d * d);
                            // dh2 = g * m2 (into dh).
                            let dh2 = &mut dh[..l * d];
                            for ((x, &gi), &m) in dh2.iter_mut().zip(gb).zip(&m2[..l * d]) {
                                *x = gi * m;
                            }
                            matmul((d, d, l), dw2, d, true, (dh2, 1, d), (&a1[..l * d], d, 1));
                            for r in dh2.chunks(d) {
                                axpy(1.0, r, db2);
                            }
                            // da1 = dh2 W2 (into a1, no longer needed), then dh1.
                            let da1 = &mut a1[..l * d];
                            matmul((l, d, d), da1, d, false, (dh2, d, 1), (w2, d, 1));
                            for ((x, &h), &m) in da1.iter_mut().zip(&h1[..l * d]).zip(&m1[..l * d])
                            {
                                *x = if h > 0.0 { *x * m } else { 0.0 };
                            }
                            let dh1 = &a1[..l * d];
                            matmul((d, d, l), dw1, d, true, (dh1, 1, d), (fb, d, 1));
                            for r in dh1.chunks(d) {
                                axpy(1.0, r, db1);
                            }
                            // dfin = g + dh1 W1.
                            let df = &mut dfb[lo * d..];
                            df.copy_from_slice(gb);
                            matmul((l, d, d), df, d, true, (dh1, d, 1), (w1, d, 1));
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
        })?;
        let dev = fin.device();
        Ok((
            Some(Tensor::from_vec(dfin, fin.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}
