//! Fused CPU kernels with hand-written backward passes: causal self-attention (scores,
//! masked softmax, dropout and the weighted sum of values in one op) and LayerNorm. Each
//! replaces a chain of candle ops (and their intermediate tensors) by one parallel pass
//! forward and one backward. Also the small helpers the fused losses share: a strided
//! single-threaded matrix product and a vectorisable `exp`.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};
use llmrec_core::Rng;
use rayon::prelude::*;

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op needs a contiguous f32 input"),
    }
}

/// Runs `f` on the contents of an f32 CPU tensor (made contiguous first).
pub(crate) fn with_slice<R>(
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
pub(crate) fn matmul(
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
pub(crate) fn fast_exp(x: f32) -> f32 {
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
pub(crate) fn max_of(x: &[f32]) -> f32 {
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
pub(crate) fn dropout_mask(seed: Option<u64>, p: f32, stream: u64, m: &mut [f32]) {
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
pub(crate) const FOLD_GROUPS: usize = 16;

/// Folds `items` in [`FOLD_GROUPS`] contiguous groups, in parallel, and returns the groups'
/// results in index order, for the caller to combine in that order.
///
/// Rayon's `fold` + `reduce` splits where work stealing happens to split, so float sums
/// (gradients) come out in a different order from run to run, and a seeded training run
/// is not reproducible. Here each group folds its items in index order and the groups are
/// fixed, so the result is the same on every run and for any number of threads.
pub(crate) fn fold_in_order<I, A, ID, F>(items: I, identity: ID, fold: F) -> Vec<A>
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
pub(crate) fn exp_in_place(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { exp_in_place_avx2(x, scale, shift) };
        }
    }
    exp_in_place_generic(x, scale, shift)
}

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
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Causal self-attention of one layer, fused: for each row `b` of `(B, T, d)` queries,
/// keys and values and each head, `softmax(scale * q k^T + mask) * dropout` times `v`.
/// Keys `j` of query `i` are valid when `pad[b] <= j <= i`; queries at padded positions
/// get a zero output. Only the `T - pad[b]` real positions of a row are computed.
///
/// The `(T, T)` weights never leave a per-row scratch buffer: the backward pass
/// recomputes them, and regenerates the dropout masks from `seed` and the row index, so
/// nothing is stored between the passes.
#[derive(Debug, Clone)]
pub(crate) struct FusedAttention {
    pub heads: usize,
    pub pad: Vec<usize>,
    pub scale: f32,
    pub dropout: f32,
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
pub(crate) struct FusedAttentionBlock(pub FusedAttention);

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

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
pub(crate) struct LayerNormOp {
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

/// Batch rows per parallel job of the per-row kernels (attention, feed-forward): few
/// enough jobs that each one's scratch buffers are allocated rarely, enough to balance
/// rows of different lengths.
const ROW_JOB: usize = 8;

/// Rows per parallel task of the row-wise kernels.
const ROWS: usize = 256;

/// A dense layer `y = x W^T + b` over the last dimension of `x` (any rank), with
/// `W` `(d_out, d_in)` and `b` `(d_out)`: one graph node instead of reshapes, a matrix
/// product, a transpose and a broadcast add.
pub(crate) struct DenseOp;

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

/// Elements per dropout-mask stream.
const DROPOUT_BLOCK: usize = 4096;

/// Inverted dropout, optionally after a ReLU: `y = max(x, 0)? * m`, with the mask `m`
/// (0 or `1/(1-p)`) drawn from `Rng::stream(seed, block)` for each block of 4096
/// elements, in parallel, and regenerated in the backward pass.
pub(crate) struct DropoutOp {
    pub p: f32,
    pub seed: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Gradients of the fused attention (with dropout) match central differences of its
    /// own forward pass, so the backward pass regenerates the same masks.
    #[test]
    fn fused_attention_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (b, t, d) = (3, 5, 4);
        let mut rng = Rng::new(1);
        let op = FusedAttention {
            heads: 2,
            pad: vec![0, 2, 5],
            scale: 0.7,
            dropout: 0.3,
            seed: Some(99),
        };
        let vars: Vec<Var> = (0..3)
            .map(|_| Var::from_vec(randn(&mut rng, b * t * d), (b, t, d), &dev).unwrap())
            .collect();
        let r = Tensor::from_vec(randn(&mut rng, b * t * d), (b, t, d), &dev).unwrap();
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
            let out = q.apply_op3(k, v, op.clone()).unwrap();
            (out * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let out = vars[0]
            .as_tensor()
            .apply_op3(vars[1].as_tensor(), vars[2].as_tensor(), op.clone())
            .unwrap();
        // Padded queries (all of row 2, the first two of row 1) give zeros.
        let o = out.to_vec3::<f32>().unwrap();
        assert!(o[2].iter().flatten().all(|&x| x == 0.0));
        assert!(o[1][..2].iter().flatten().all(|&x| x == 0.0));
        let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let eps = 1e-2f32;
        for (which, var) in vars.iter().enumerate() {
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..base.len() {
                let at = |delta: f32| {
                    let mut x = base.clone();
                    x[i] += delta;
                    let x = Tensor::from_vec(x, (b, t, d), &dev).unwrap();
                    let mut args: Vec<Tensor> =
                        vars.iter().map(|v| v.as_tensor().clone()).collect();
                    args[which] = x;
                    loss(&args[0], &args[1], &args[2])
                };
                let numeric = ((at(eps) - at(-eps)) / (2.0 * eps as f64)) as f32;
                assert!(
                    (numeric - g[i]).abs() < 2e-2 * (1.0 + numeric.abs()),
                    "input {which}, element {i}: analytic {} vs numeric {numeric}",
                    g[i]
                );
            }
        }
    }

    /// Checks the gradients of `f(inputs)` (a scalar) against central differences.
    fn check_gradients(f: &dyn Fn(&[Tensor]) -> Tensor, vars: &[Var], tol: f32) {
        let dev = Device::Cpu;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = f(&tensors).backward().unwrap();
        let eps = 1e-2f32;
        for (which, var) in vars.iter().enumerate() {
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..base.len() {
                let at = |delta: f32| {
                    let mut x = base.clone();
                    x[i] += delta;
                    let mut args = tensors.clone();
                    args[which] = Tensor::from_vec(x, var.shape(), &dev).unwrap();
                    f(&args).to_scalar::<f32>().unwrap() as f64
                };
                let numeric = ((at(eps) - at(-eps)) / (2.0 * eps as f64)) as f32;
                assert!(
                    (numeric - g[i]).abs() < tol * (1.0 + numeric.abs()),
                    "input {which}, element {i}: analytic {} vs numeric {numeric}",
                    g[i]
                );
            }
        }
    }

    /// The fused block halves (with dropout) against central differences of their own
    /// forward passes: the backward passes regenerate the same masks.
    #[test]
    fn fused_block_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (b, t, d) = (3, 5, 4);
        let mut rng = Rng::new(4);
        let attn = FusedAttention {
            heads: 2,
            pad: vec![1, 0, 5],
            scale: 0.5,
            dropout: 0.3,
            seed: Some(5),
        };
        let r = Tensor::from_vec(randn(&mut rng, b * t * d), (b, t, d), &dev).unwrap();
        let var = |rng: &mut Rng, shape: &[usize]| {
            let n = shape.iter().product();
            Var::from_vec(randn(rng, n), shape, &dev).unwrap()
        };
        let vars = [
            var(&mut rng, &[b, t, d]),
            var(&mut rng, &[b, t, d]),
            var(&mut rng, &[3 * d * d + 3 * d]),
        ];
        let block = FusedAttentionBlock(attn.clone());
        let f = |x: &[Tensor]| {
            let out = x[0].apply_op3(&x[1], &x[2], block.clone()).unwrap();
            (out * &r).unwrap().sum_all().unwrap()
        };
        check_gradients(&f, &vars, 2e-2);

        let ffn = FusedFfn {
            pad: vec![1, 0, 5],
            dropout: 0.3,
            seed: Some(6),
        };
        let vars = [
            var(&mut rng, &[b, t, d]),
            var(&mut rng, &[2 * d * d + 2 * d]),
        ];
        let f = |x: &[Tensor]| {
            let out = x[0].apply_op2(&x[1], ffn.clone()).unwrap();
            (out * &r).unwrap().sum_all().unwrap()
        };
        check_gradients(&f, &vars, 2e-2);
        // Padded positions give zeros; some hidden units were dropped.
        let out = vars[0]
            .as_tensor()
            .apply_op2(vars[1].as_tensor(), ffn.clone())
            .unwrap();
        let o = out.to_vec3::<f32>().unwrap();
        assert!(o[2].iter().flatten().all(|&x| x == 0.0));
        assert!(o[0][0].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=20_000 {
            let x = -90.0 + i as f32 * 0.00495;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                (got - want).abs() <= 1e-6 * want + 1e-37,
                "exp({x}) = {want}, got {got}"
            );
        }
        let mut v: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let sum = exp_in_place(&mut v, 2.0, 3.0);
        let want: f32 = (0..37).map(|i| (i as f32 * 0.2 - 3.0).exp()).sum();
        assert!((sum - want).abs() < 1e-5 * want);
        assert!((v[36] - (36.0f32 * 0.2 - 3.0).exp()).abs() < 1e-5);
    }

    #[test]
    fn dropout_op_masks_and_gradients_agree() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(2);
        let n = 3 * DROPOUT_BLOCK + 17;
        let x = Var::from_vec(randn(&mut rng, n), n, &dev).unwrap();
        for relu in [false, true] {
            let op = DropoutOp {
                p: 0.25,
                seed: 7,
                relu,
            };
            let y = x.as_tensor().apply_op1(op).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
            let (xs, ys): (Vec<f32>, Vec<f32>) =
                (x.as_tensor().to_vec1().unwrap(), y.to_vec1().unwrap());
            let mut dropped = 0;
            for i in 0..n {
                let xi = if relu { xs[i].max(0.0) } else { xs[i] };
                // y = x' * m with m in {0, 1/(1-p)}; dy/dx = m where x' = x, else 0.
                let m = g[i];
                assert!(m == 0.0 || (m - 1.0 / 0.75).abs() < 1e-6, "{m}");
                assert!((ys[i] - xi * m).abs() < 1e-6);
                if relu && xs[i] <= 0.0 {
                    assert_eq!(m, 0.0);
                } else if m == 0.0 {
                    dropped += 1;
                }
            }
            let kept_positions = if relu {
                xs.iter().filter(|&&v| v > 0.0).count()
            } else {
                n
            };
            let rate = dropped as f64 / kept_positions as f64;
            assert!((rate - 0.25).abs() < 0.03, "drop rate {rate}");
        }
    }
}

/// The feed-forward half of a SASRec block, fused: for `fin` `(B, T, d)` and the packed
/// parameters `[W1 (d x d), b1 (d), W2 (d x d), b2 (d)]`,
/// `out = (fin + dropout(relu(fin W1^T + b1)) W2^T + b2 dropped) * keep`,
/// where `keep` is 0 on the `pad[b]` padded positions at the start of row `b` (which are
/// skipped entirely). Dropout masks come from `Rng::stream(seed, row)` per position and are
/// regenerated in the backward pass, which also recomputes the hidden layer.
#[derive(Debug, Clone)]
pub(crate) struct FusedFfn {
    pub pad: Vec<usize>,
    pub dropout: f32,
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
