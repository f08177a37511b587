//! Fused CPU kernels (candle custom ops) with hand-written backward passes: causal self-attention (scores,
//! masked softmax, dropout and the weighted sum of values in one op) and LayerNorm. Each
//! replaces a chain of candle ops (and their intermediate tensors) by one parallel pass
//! forward and one backward. Also the small helpers the fused losses share: a strided
//! single-threaded matrix product and a vectorisable `exp`.

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use llmrec_core::Rng;
use rayon::prelude::*;

/// The f32 data of a CPU tensor with a contiguous layout, from its start offset to
/// its end; an error for another dtype or a strided layout.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op needs a contiguous f32 input"),
    }
}

/// Runs `f` on the contents of an f32 CPU tensor (made contiguous first).
pub fn with_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous_f32(s, layout)?),
        _ => candle_core::bail!("fused op needs a CPU tensor"),
    }
}

/// `dst (m x n) = a (m x k) * b (k x n)`, or `dst += a * b` with `accumulate`, on one
/// thread. Matrices are given by slices starting at their first element and their row
/// and column strides (`dst` has column stride 1).
///
/// # Panics
///
/// If a matrix does not fit in its slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || dst_rs >= n, "overlapping destination rows");
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "destination out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "lhs out of bounds"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "rhs out of bounds"
    );
    // SAFETY: the asserts above keep every element gemm reads or writes inside the three
    // slices, destination rows do not overlap, and `dst` is a unique borrow, so it aliases
    // neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `exp(x)` for `x <= 0` (inputs above 0 work up to about 88), branch-free integer and
/// float arithmetic only, so loops over it vectorise; relative error about 2e-7.
/// Underflows to about 0 below -87.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on [-ln2/2, ln2/2]: degree-6 Cephes polynomial.
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let n = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits((n.wrapping_add(127) as u32) << 23);
    p * scale
}

/// Maximum of a non-empty slice (NaN-free input), vectorisable.
#[inline]
pub fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        m = m.max(v);
    }
    m
}

/// Writes inverted-dropout multipliers (0, or `1 / (1 - p)` with probability `1 - p`)
/// into `m`, drawn from stream `stream` of `seed`, 16 random bits per element; all ones
/// without a seed or with `p == 0`. The same arguments give the same mask, so a backward
/// pass can regenerate its forward pass's mask instead of storing it.
pub fn dropout_mask(seed: Option<u64>, p: f32, stream: u64, m: &mut [f32]) {
    match seed {
        Some(seed) if p > 0.0 => fill_dropout_mask(&mut Rng::stream(seed, stream), p, m),
        _ => m.fill(1.0),
    }
}

/// [`dropout_mask`]'s draw from an open stream `rng` (`p > 0`), for callers that draw
/// several masks from one stream.
fn fill_dropout_mask(rng: &mut Rng, p: f32, m: &mut [f32]) {
    let threshold = (p * 65536.0).round().min(65535.0) as u64;
    let keep = 1.0 / (1.0 - p);
    for chunk in m.chunks_mut(4) {
        let mut bits = rng.next_u64();
        for x in chunk {
            *x = if bits & 0xFFFF >= threshold {
                keep
            } else {
                0.0
            };
            bits >>= 16;
        }
    }
}

/// Contiguous groups of a [`fold_in_order`]. Fixed, not the thread count, so the sums do
/// not depend on the machine.
pub const FOLD_GROUPS: usize = 16;

/// Folds `items` in [`FOLD_GROUPS`] contiguous groups, in parallel, and returns the groups'
/// results in index order, for the caller to combine in that order.
///
/// Rayon's `fold` + `reduce` splits where work stealing happens to split, so float sums
/// (gradients) come out in a different order from run to run, and a seeded training run
/// is not reproducible. Here each group folds its items in index order and the groups are
/// fixed, so the result is the same on every run and for any number of threads.
pub fn fold_in_order<I, A, ID, F>(items: I, identity: ID, fold: F) -> Vec<A>
where
    I: IndexedParallelIterator,
    A: Send,
    ID: Fn() -> A + Send + Sync,
    F: Fn(A, I::Item) -> A + Send + Sync,
{
    let group = items.len().div_ceil(FOLD_GROUPS).max(1);
    items.fold_chunks(group, identity, fold).collect()
}

/// Adds `b` into `a`: sums the groups' gradient buffers of a [`fold_in_order`].
fn add_grad(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    axpy(1.0, &b, &mut a);
    a
}

/// [`add_grad`] for a (weight, bias) pair of gradient buffers.
fn add_grad2((a, b): (Vec<f32>, Vec<f32>), (c, e): (Vec<f32>, Vec<f32>)) -> (Vec<f32>, Vec<f32>) {
    (add_grad(a, c), add_grad(b, e))
}

/// `x[j] = exp(scale * x[j] - shift)` in place; returns the sum. Uses AVX2 where the CPU
/// has it.
pub fn exp_in_place(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { exp_in_place_avx2(x, scale, shift) };
        }
    }
    exp_in_place_generic(x, scale, shift)
}

/// [`exp_in_place`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_in_place_avx2(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    exp_in_place_generic(x, scale, shift)
}

#[inline(always)]
fn exp_in_place_generic(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = fast_exp(*v * scale - shift);
            *a += *v;
        }
    }
    let mut s = 0.0;
    for v in chunks.into_remainder() {
        *v = fast_exp(*v * scale - shift);
        s += *v;
    }
    s + acc.iter().sum::<f32>()
}

/// Dot product, vectorisable.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    let mut s: f32 = ra.iter().zip(rb).map(|(u, v)| u * v).sum();
    s += acc.iter().sum::<f32>();
    s
}

/// `y += alpha * x`.
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Batch rows per parallel job of the per-row kernels (attention, feed-forward): few
/// enough jobs that each one's scratch buffers are allocated rarely, enough to balance
/// rows of different lengths.
const ROW_JOB: usize = 8;

/// Rows per parallel task of the row-wise kernels.
const ROWS: usize = 256;

mod attention;
mod dense;
mod dropout;
mod ffn;
mod norm;
#[cfg(test)]
mod tests;

pub use attention::{FusedAttention, FusedAttentionBlock};
pub use dense::DenseOp;
pub use dropout::DropoutOp;
pub use ffn::FusedFfn;
pub use norm::LayerNormOp;
