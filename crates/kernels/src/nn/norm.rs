//! Fused LayerNorm with its backward pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
pub struct LayerNormOp {
    /// Added to the variance before the square root.
    pub eps: f32,
}

fn normalise_row(x: &[f32], eps: f32, xhat: &mut [f32]) -> f32 {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (h, &v) in xhat.iter_mut().zip(x) {
        *h = (v - mean) * inv;
    }
    inv
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "llmrec-layer-norm"
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
        let x = contiguous_f32(s1, l1)?;
        let w = contiguous_f32(s2, l2)?;
        let b = contiguous_f32(s3, l3)?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * 64)
            .zip(x.par_chunks(d * 64))
            .for_each(|(ys, xs)| {
                for (y, xr) in ys.chunks_mut(d).zip(xs.chunks(d)) {
                    normalise_row(xr, self.eps, y);
                    for ((yj, &wj), &bj) in y.iter_mut().zip(w).zip(b) {
                        *yj = *yj * wj + bj;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let eps = self.eps;
        let mut dx = vec![0f32; x.elem_count()];
        // One pass: dx per row, and per-task partial sums of dw and db.
        let (dw, db) = with_slice(x, |xs| {
            with_slice(w, |ws| {
                with_slice(g, |gs| {
                    let parts = fold_in_order(
                        dx.par_chunks_mut(d * ROWS)
                            .zip(xs.par_chunks(d * ROWS).zip(gs.par_chunks(d * ROWS))),
                        || (vec![0f32; d], vec![0f32; d], vec![0f32; d], vec![0f32; d]),
                        |(mut dw, mut db, mut xhat, mut gh), (dxs, (xs, gs))| {
                            for ((dx, xr), gr) in
                                dxs.chunks_mut(d).zip(xs.chunks(d)).zip(gs.chunks(d))
                            {
                                let inv = normalise_row(xr, eps, &mut xhat);
                                let (mut m1, mut m2) = (0.0, 0.0);
                                for j in 0..d {
                                    dw[j] += gr[j] * xhat[j];
                                    db[j] += gr[j];
                                    gh[j] = gr[j] * ws[j];
                                    m1 += gh[j];
                                    m2 += gh[j] * xhat[j];
                                }
                                m1 /= d as f32;
                                m2 /= d as f32;
                                for j in 0..d {
                                    dx[j] = inv * (gh[j] - m1 - xhat[j] * m2);
                                }
                            }
                            (dw, db, xhat, gh)
                        },
                    );
                    Ok(parts
                        .into_iter()
                        .map(|(dw, db, _, _)| (dw, db))
                        .reduce(add_grad2)
                        .unwrap_or_else(|| (vec![0f32; d], vec![0f32; d])))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, d, dev)?),
            Some(Tensor::from_vec(db, d, dev)?),
        ))
    }
}
