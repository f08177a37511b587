//! Inverted dropout (optionally after a ReLU) with masks regenerated in the backward
//! pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// Elements per dropout-mask stream.
pub(super) const DROPOUT_BLOCK: usize = 4096;

/// Inverted dropout, optionally after a ReLU: `y = max(x, 0)? * m`, with the mask `m`
/// (0 or `1/(1-p)`) drawn from `Rng::stream(seed, block)` for each block of 4096
/// elements, in parallel, and regenerated in the backward pass.
pub struct DropoutOp {
    /// Dropout probability.
    pub p: f32,
    /// Seed of the masks.
    pub seed: u64,
    /// Apply a ReLU before the mask.
    pub relu: bool,
}

impl DropoutOp {
    fn mask(&self, block: usize, m: &mut [f32]) {
        dropout_mask(Some(self.seed), self.p, block as u64, m);
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "llmrec-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(DROPOUT_BLOCK)
            .zip(x.par_chunks(DROPOUT_BLOCK))
            .enumerate()
            .for_each(|(blk, (y, x))| {
                self.mask(blk, y);
                for (yi, &xi) in y.iter_mut().zip(x) {
                    let xi = if self.relu { xi.max(0.0) } else { xi };
                    *yi *= xi;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut dx = vec![0f32; arg.elem_count()];
        with_slice(arg, |x| {
            with_slice(grad, |g| {
                dx.par_chunks_mut(DROPOUT_BLOCK)
                    .zip(x.par_chunks(DROPOUT_BLOCK).zip(g.par_chunks(DROPOUT_BLOCK)))
                    .enumerate()
                    .for_each(|(blk, (dx, (x, g)))| {
                        self.mask(blk, dx);
                        for ((d, &xi), &gi) in dx.iter_mut().zip(x).zip(g) {
                            let pass = !self.relu || xi > 0.0;
                            *d = if pass { *d * gi } else { 0.0 };
                        }
                    });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}
