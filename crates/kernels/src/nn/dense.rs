//! A dense layer `y = x W^T + b` as one graph node.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// A dense layer `y = x W^T + b` over the last dimension of `x` (any rank), with
/// `W` `(d_out, d_in)` and `b` `(d_out)`: one graph node instead of reshapes, a matrix
/// product, a transpose and a broadcast add.
pub struct DenseOp;

fn dense_dims(x: &Shape, w: &Shape) -> candle_core::Result<(usize, usize, usize, Shape)> {
    let (d_out, d_in) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&d_in) {
        candle_core::bail!("dense: input {dims:?} does not end in {d_in}");
    }
    let rows = x.elem_count() / d_in.max(1);
    let mut out = dims.to_vec();
    let last = out.len() - 1;
    out[last] = d_out;
    Ok((rows, d_in, d_out, Shape::from(out)))
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "llmrec-dense"
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
        let (rows, d_in, d_out, shape) = dense_dims(l1.shape(), l2.shape())?;
        let (x, w, b) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        if b.len() != d_out {
            candle_core::bail!("dense: bias of {} for {d_out} outputs", b.len());
        }
        let mut y = vec![0f32; rows * d_out];
        y.par_chunks_mut(ROWS * d_out)
            .zip(x.par_chunks(ROWS * d_in))
            .for_each(|(yc, xc)| {
                let n = xc.len() / d_in;
                for r in yc.chunks_mut(d_out) {
                    r.copy_from_slice(b);
                }
                matmul(
                    (n, d_out, d_in),
                    yc,
                    d_out,
                    true,
                    (xc, d_in, 1),
                    (w, 1, d_in),
                );
            });
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, d_in, d_out, _) = dense_dims(x.shape(), w.shape())?;
        let mut dx = vec![0f32; x.elem_count()];
        let (dw, db) = with_slice(x, |xs| {
            with_slice(w, |ws| {
                with_slice(g, |gs| {
                    let parts = fold_in_order(
                        dx.par_chunks_mut(ROWS * d_in)
                            .zip(xs.par_chunks(ROWS * d_in).zip(gs.par_chunks(ROWS * d_out))),
                        || (vec![0f32; d_out * d_in], vec![0f32; d_out]),
                        |(mut dw, mut db), (dxc, (xc, gc))| {
                            let n = xc.len() / d_in;
                            // dx = g W; dW += g^T x; db += column sums of g.
                            matmul(
                                (n, d_in, d_out),
                                dxc,
                                d_in,
                                false,
                                (gc, d_out, 1),
                                (ws, d_in, 1),
                            );
                            matmul(
                                (d_out, d_in, n),
                                &mut dw,
                                d_in,
                                true,
                                (gc, 1, d_out),
                                (xc, d_in, 1),
                            );
                            for r in gc.chunks(d_out) {
                                axpy(1.0, r, &mut db);
                            }
                            (dw, db)
                        },
                    );
                    Ok(parts
                        .into_iter()
                        .reduce(add_grad2)
                        .unwrap_or_else(|| (vec![0f32; d_out * d_in], vec![0f32; d_out])))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, (d_out, d_in), dev)?),
            Some(Tensor::from_vec(db, d_out, dev)?),
        ))
    }
}
