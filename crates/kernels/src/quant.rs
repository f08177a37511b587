//! Fused CPU kernels for token-by-token decoding.
//!
//! A decoding step runs every weight matrix on one new row per sequence. With
//! candle's ops that is ~25 small ops per layer, each allocating its output;
//! here a step is plain loops over quantized weights. As in ggml, each
//! activation row is quantized per block of 32 values (Q8_0), and each block
//! product is an integer dot product (AVX2 `maddubs`, or AVX512-VNNI
//! `vpdpbusd` where the CPU has it) scaled into f32 lanes. Weights are Q8_0
//! (requantized at load) or Q4_1 as GGUF files ship them. Log-prob scoring
//! and prompts never come here: they use the exact f32 path.

use crate::team::{SharedOut, Team, part_rows};

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// A `(rows, cols)` matrix in Q8_0: per block of 32 values of a row, one scale
/// `d` and 32 codes `q` with `value ≈ d * q`.
pub struct Q8Mat {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    q: Vec<i8>,
}

impl Q8Mat {
    /// Quantizes a row-major `(rows, cols)` f32 matrix (`cols` a multiple of
    /// 32) as ggml's Q8_0 does: `d = max|x| / 127`, `q = round(x / d)`.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Option<Q8Mat> {
        if !cols.is_multiple_of(BLOCK) || w.len() != rows * cols {
            return None;
        }
        let (mut d, mut q) = (Vec::new(), Vec::new());
        quantize_blocks(w, &mut d, &mut q);
        Some(Q8Mat { rows, cols, d, q })
    }
}

/// Quantizes `w` (a multiple of 32 long) as ggml's Q8_0 does, appending to
/// `d` and `q`: per block `d = max|x| / 127`, `q = round(x / d)`.
fn quantize_blocks(w: &[f32], d: &mut Vec<f32>, q: &mut Vec<i8>) {
    d.reserve(w.len() / BLOCK);
    q.reserve(w.len());
    for b in w.chunks_exact(BLOCK) {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        d.push(scale);
        q.extend(b.iter().map(|x| (x * inv).round() as i8));
    }
}

/// Activation rows quantized per block of 32 like Q8_0 weights (ggml's
/// integer decoding kernels): the products then run on 8-bit integers.
/// Buffers are reused from step to step.
#[derive(Default)]
pub struct Q8Rows {
    n: usize,
    cols: usize,
    d: Vec<f32>,
    q: Vec<i8>,
    /// Per block, `d * Σ q` (the offset term of Q4_1 weights needs it).
    s: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes the `n` rows of `xs` (`n * cols` values, `cols` a multiple of 32).
    pub fn set(&mut self, xs: &[f32], n: usize, cols: usize) {
        debug_assert_eq!(xs.len(), n * cols);
        debug_assert_eq!(cols % BLOCK, 0);
        self.d.clear();
        self.q.clear();
        quantize_blocks(xs, &mut self.d, &mut self.q);
        self.s.clear();
        self.s.extend(
            self.q
                .chunks_exact(BLOCK)
                .zip(&self.d)
                .map(|(q, d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32),
        );
        self.n = n;
        self.cols = cols;
    }
}

/// A `(rows, cols)` matrix in Q4_1, as GGUF files ship it: per block of 32
/// values of a row, a scale `d`, an offset `m` and 32 4-bit codes `q`
/// (`value = d * q + m`), half the bytes of Q8_0.
pub struct Q41Mat {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    m: Vec<f32>,
    /// 16 bytes per block: values `0..16` in the low nibbles, `16..32` high.
    qs: Vec<u8>,
}

impl Q41Mat {
    /// Reads ggml's Q4_1 blocks (20 bytes: f16 `d`, f16 `m`, 16 bytes of codes).
    pub fn from_ggml(raw: &[u8], rows: usize, cols: usize) -> Option<Q41Mat> {
        const SIZE: usize = 20;
        if !cols.is_multiple_of(BLOCK) || raw.len() != rows * cols / BLOCK * SIZE {
            return None;
        }
        let nb = raw.len() / SIZE;
        let (mut d, mut m, mut qs) = (
            Vec::with_capacity(nb),
            Vec::with_capacity(nb),
            Vec::with_capacity(nb * 16),
        );
        for b in raw.chunks_exact(SIZE) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            qs.extend_from_slice(&b[4..]);
        }
        Some(Q41Mat {
            rows,
            cols,
            d,
            m,
            qs,
        })
    }

    /// The offset term of row `r` times activation row `s`: `Σ_b m_b · d_b Σ x`.
    #[inline(always)]
    fn offset(&self, r: usize, x: &Q8Rows, s: usize) -> f32 {
        let nb = self.cols / BLOCK;
        let (m, xs) = (&self.m[r * nb..(r + 1) * nb], &x.s[s * nb..(s + 1) * nb]);
        m.iter().zip(xs).fold(0f32, |a, (m, s)| m.mul_add(*s, a))
    }
}

/// A weight matrix in a format the integer decoding kernels take.
pub enum DecodeMat {
    /// Q8_0 (also what other formats are requantized to).
    Q8(Q8Mat),
    /// Q4_1, as shipped.
    Q41(Q41Mat),
}

impl DecodeMat {
    /// Output rows.
    pub fn rows(&self) -> usize {
        match self {
            DecodeMat::Q8(w) => w.rows,
            DecodeMat::Q41(w) => w.rows,
        }
    }

    /// Rows `lo..hi` of `ys (n, rows) = x (n, cols) · Wᵀ`.
    ///
    /// # Safety
    /// `ys` must point to `n * rows` floats that outlive the call, of which
    /// no other thread touches rows `lo..hi` meanwhile.
    unsafe fn rows_part(&self, x: &Q8Rows, lo: usize, hi: usize, ys: &SharedOut) {
        let (n, rows) = (x.n, self.rows());
        assert!(ys.len == n * rows && lo <= hi && hi <= rows && x.cols == self.cols());
        if lo == hi {
            return;
        }
        if n == 1 {
            // SAFETY: rows `lo..hi` are in bounds (asserted) and ours alone.
            let out = unsafe { std::slice::from_raw_parts_mut(ys.ptr.add(lo), hi - lo) };
            self.rows_q8(lo, x, out);
            return;
        }
        let mut t = vec![0f32; (hi - lo) * n];
        self.rows_q8(lo, x, &mut t);
        for r in lo..hi {
            for s in 0..n {
                // SAFETY: in bounds (asserted), and row `r` is ours alone.
                unsafe { *ys.ptr.add(s * rows + r) = t[(r - lo) * n + s] };
            }
        }
    }

    /// Input columns.
    fn cols(&self) -> usize {
        match self {
            DecodeMat::Q8(w) => w.cols,
            DecodeMat::Q41(w) => w.cols,
        }
    }

    /// Rows `r0..` of the product into `out` (`n` values per row).
    fn rows_q8(&self, r0: usize, x: &Q8Rows, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                let vnni = has!("avx512vnni") && has!("avx512vl");
                // SAFETY: the CPU has AVX2 and FMA, and AVX512-VNNI and
                // AVX512-VL where the VNNI kernels are chosen.
                unsafe {
                    match (self, vnni) {
                        (DecodeMat::Q8(w), true) => x86::q8_vnni(w, r0, x, out),
                        (DecodeMat::Q8(w), false) => x86::q8_avx2(w, r0, x, out),
                        (DecodeMat::Q41(w), true) => x86::q41_vnni(w, r0, x, out),
                        (DecodeMat::Q41(w), false) => x86::q41_avx2(w, r0, x, out),
                    }
                }
                return;
            }
        }
        self.rows_q8_generic(r0, x, out)
    }

    /// Portable version of [`DecodeMat::rows_q8`]: the same integer block sums
    /// and the same 8-lane float accumulation, so results match bit for bit.
    fn rows_q8_generic(&self, r0: usize, x: &Q8Rows, out: &mut [f32]) {
        let n = x.n;
        let cols = x.cols;
        let nb = cols / BLOCK;
        for (i, res) in out.chunks_exact_mut(n).enumerate() {
            let r = r0 + i;
            for (s, o) in res.iter_mut().enumerate() {
                let xq = &x.q[s * cols..(s + 1) * cols];
                let xd = &x.d[s * nb..(s + 1) * nb];
                let mut acc = [0f32; 8];
                for b in 0..nb {
                    let v = &xq[b * BLOCK..(b + 1) * BLOCK];
                    // Weight codes of the block and its scale.
                    let (w, wd): ([i32; BLOCK], f32) = match self {
                        DecodeMat::Q8(m) => {
                            let q = &m.q[r * cols + b * BLOCK..];
                            (std::array::from_fn(|j| q[j] as i32), m.d[r * nb + b])
                        }
                        DecodeMat::Q41(m) => {
                            let q = &m.qs[(r * nb + b) * 16..];
                            let code = |j: usize| {
                                if j < 16 {
                                    (q[j] & 15) as i32
                                } else {
                                    (q[j - 16] >> 4) as i32
                                }
                            };
                            (std::array::from_fn(code), m.d[r * nb + b])
                        }
                    };
                    let sc = wd * xd[b];
                    for (k, a) in acc.iter_mut().enumerate() {
                        let p: i32 = (0..4).map(|j| w[k * 4 + j] * v[k * 4 + j] as i32).sum();
                        *a = (p as f32).mul_add(sc, *a);
                    }
                }
                *o = match self {
                    DecodeMat::Q8(_) => hsum8(&acc),
                    DecodeMat::Q41(m) => hsum8(&acc) + m.offset(r, x, s),
                };
            }
        }
    }
}

/// `ys = x · Wᵀ` for each `(W, ys)` of `outs` (all taking the same input
/// rows), each matrix's rows split over the team. Each output is computed the
/// same way whatever `n` and the team size are, so a sequence decodes to the
/// same tokens alone or in a batch, on one thread or several.
pub fn matmul_q8(team: &Team<'_>, x: &Q8Rows, outs: &mut [(&DecodeMat, &mut [f32])]) {
    let parts = team.threads();
    let shared: Vec<(&DecodeMat, SharedOut)> = outs
        .iter_mut()
        .map(|(m, ys)| {
            assert_eq!(ys.len(), x.n * m.rows(), "output size");
            (*m, SharedOut::new(ys))
        })
        .collect();
    team.run(&|part| {
        for (m, ys) in &shared {
            let (lo, hi) = part_rows(m.rows(), part, parts);
            // SAFETY: `ys` is borrowed mutably for this call, and parts take
            // disjoint rows.
            unsafe { m.rows_part(x, lo, hi, ys) };
        }
    });
}

/// Sum of 8 lanes in a fixed order (pairs, then pairs of pairs), the order
/// the SIMD kernels use.
#[inline(always)]
fn hsum8(a: &[f32; 8]) -> f32 {
    let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let q = [h[0] + h[2], h[1] + h[3]];
    q[0] + q[1]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The integer kernels. Per block, 32 unsigned bytes times 32 signed bytes
    //! are summed in groups of 4 into 8 i32 lanes (`maddubs` + `madd` on
    //! AVX2, one `vpdpbusd` with VNNI), then scaled into 8 f32 lanes. Q8_0
    //! weights are signed: |w| times x with w's sign. Q4_1 codes are unsigned.
    use super::{BLOCK, Q8Mat, Q8Rows, Q41Mat};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn udot_avx2(u: __m256i, x: __m256i) -> __m256i {
        // u ≤ 127 and |x| ≤ 127, so the i16 pair sums cannot saturate.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn udot_vnni(u: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let mut a = [0f32; 8];
        // SAFETY: `a` holds 8 f32.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        super::hsum8(&a)
    }

    macro_rules! kernel {
        ($name:ident, $features:literal, $mat:ty, $field:ident, $stride:expr, $codes:ident, $udot:ident, $signed:expr, $offset:expr) => {
            /// Rows `r0..` of `m · x` into `out` (`x.n` values per row).
            #[target_feature(enable = $features)]
            pub(super) fn $name(m: &$mat, r0: usize, x: &Q8Rows, out: &mut [f32]) {
                let (n, nb) = (x.n, m.cols / BLOCK);
                let rows = out.len() / n.max(1);
                assert!(
                    x.cols == m.cols
                        && out.len() == rows * n
                        && r0 + rows <= m.rows
                        && m.d.len() == m.rows * nb
                        && m.$field.len() == m.rows * nb * $stride
                        && x.q.len() == n * m.cols
                        && x.d.len() == n * nb
                );
                /// Integer block sums of weight codes `w` and activations `v`.
                #[inline]
                #[target_feature(enable = $features)]
                fn dot(w: __m256i, v: __m256i) -> __m256i {
                    if $signed {
                        $udot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(v, w))
                    } else {
                        $udot(w, v)
                    }
                }
                let offset: fn(&$mat, usize, &Q8Rows, usize) -> f32 = $offset;
                let w = m.$field.as_ptr() as *const u8;
                let xq = x.q.as_ptr() as *const u8;

                /// `R` rows from `r` times the one activation row.
                #[inline]
                #[target_feature(enable = $features)]
                fn tile_rows<const R: usize>(
                    m: &$mat,
                    w: *const u8,
                    xq: *const u8,
                    x: &Q8Rows,
                    r: usize,
                ) -> [__m256; R] {
                    let nb = m.cols / BLOCK;
                    let mut acc = [_mm256_setzero_ps(); R];
                    for b in 0..nb {
                        // SAFETY: rows `r..r + R` and block `b` are in bounds
                        // (the caller's assertion).
                        unsafe {
                            let xv = _mm256_loadu_si256(xq.add(b * BLOCK) as *const __m256i);
                            let xd = *x.d.get_unchecked(b);
                            for (j, a) in acc.iter_mut().enumerate() {
                                let blk = (r + j) * nb + b;
                                _mm_prefetch::<_MM_HINT_T0>(
                                    w.wrapping_add(blk * $stride + PREFETCH) as *const i8,
                                );
                                let p = dot($codes(w.add(blk * $stride)), xv);
                                let sc = _mm256_set1_ps(*m.d.get_unchecked(blk) * xd);
                                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, *a);
                            }
                        }
                    }
                    acc
                }

                /// Row `r` times `S` activation rows from `s0`.
                #[inline]
                #[target_feature(enable = $features)]
                fn tile_seqs<const S: usize>(
                    m: &$mat,
                    w: *const u8,
                    xq: *const u8,
                    x: &Q8Rows,
                    r: usize,
                    s0: usize,
                ) -> [__m256; S] {
                    let nb = m.cols / BLOCK;
                    let mut acc = [_mm256_setzero_ps(); S];
                    for b in 0..nb {
                        let blk = r * nb + b;
                        // SAFETY: row `r`, sequences `s0..s0 + S` and block `b`
                        // are in bounds (the caller's assertion).
                        unsafe {
                            _mm_prefetch::<_MM_HINT_T0>(
                                w.wrapping_add(blk * $stride + PREFETCH) as *const i8
                            );
                            let wv = $codes(w.add(blk * $stride));
                            let wd = *m.d.get_unchecked(blk);
                            for (j, a) in acc.iter_mut().enumerate() {
                                let xb = (s0 + j) * nb + b;
                                let v = _mm256_loadu_si256(xq.add(xb * BLOCK) as *const __m256i);
                                let p = dot(wv, v);
                                let sc = _mm256_set1_ps(wd * *x.d.get_unchecked(xb));
                                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, *a);
                            }
                        }
                    }
                    acc
                }

                if n == 1 {
                    // One sequence: 4 rows at a time share each activation load.
                    let mut i = 0;
                    while i + 4 <= rows {
                        let acc = tile_rows::<4>(m, w, xq, x, r0 + i);
                        for (j, a) in acc.iter().enumerate() {
                            out[i + j] = hsum(*a) + offset(m, r0 + i + j, x, 0);
                        }
                        i += 4;
                    }
                    for i in i..rows {
                        let [a] = tile_rows::<1>(m, w, xq, x, r0 + i);
                        out[i] = hsum(a) + offset(m, r0 + i, x, 0);
                    }
                    return;
                }
                // Several sequences: up to 4 at a time share each weight load.
                for (i, res) in out.chunks_exact_mut(n).enumerate() {
                    let r = r0 + i;
                    let mut s = 0;
                    while s + 4 <= n {
                        let acc = tile_seqs::<4>(m, w, xq, x, r, s);
                        for (j, a) in acc.iter().enumerate() {
                            res[s + j] = hsum(*a) + offset(m, r, x, s + j);
                        }
                        s += 4;
                    }
                    for s in s..n {
                        let [a] = tile_seqs::<1>(m, w, xq, x, r, s);
                        res[s] = hsum(a) + offset(m, r, x, s);
                    }
                }
            }
        };
    }

    /// How far ahead of each weight stream to prefetch, in bytes. The
    /// hardware prefetcher alone left the kernels waiting on memory: 4 KiB
    /// ahead took one-sequence decoding from 61 to 82 tok/s (docs/benchmark-log.md).
    const PREFETCH: usize = 4096;

    /// Q8_0 codes of a block (signed bytes).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA, and `p` points to 32 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8_codes(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 32 readable bytes.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    /// Q4_1 codes of a block (16 bytes of nibbles), one per byte.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA, and `p` points to 16 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q41_codes(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 16 readable bytes.
        let lo = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let both = _mm256_set_m128i(_mm_srli_epi16(lo, 4), lo);
        _mm256_and_si256(both, _mm256_set1_epi8(15))
    }

    const NO_OFFSET: fn(&Q8Mat, usize, &Q8Rows, usize) -> f32 = |_, _, _, _| 0.0;
    kernel!(
        q8_avx2, "avx2,fma", Q8Mat, q, BLOCK, q8_codes, udot_avx2, true, NO_OFFSET
    );
    kernel!(
        q8_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        Q8Mat,
        q,
        BLOCK,
        q8_codes,
        udot_vnni,
        true,
        NO_OFFSET
    );
    kernel!(
        q41_avx2,
        "avx2,fma",
        Q41Mat,
        qs,
        16,
        q41_codes,
        udot_avx2,
        false,
        Q41Mat::offset
    );
    kernel!(
        q41_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        Q41Mat,
        qs,
        16,
        q41_codes,
        udot_vnni,
        false,
        Q41Mat::offset
    );
}

/// Dot product of two equal-length slices, in 8 lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// RMS norm of each `dim`-row of `x` into `out`, times `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let inv = inv_rms(xr, eps);
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// [`rms_norm`] of each row of `x` (rows of `w.len()`) in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let inv = inv_rms(xr, eps);
        xr.iter_mut().zip(w).for_each(|(v, g)| *v *= inv * g);
    }
}

/// `1 / sqrt(mean(x²) + eps)`.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// Interleaved rotary embedding of one head vector in place (pairs `2i, 2i+1`).
pub fn rope_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[i] - b * sin[i];
        pair[1] = a * sin[i] + b * cos[i];
    }
}

/// Rotary embedding of one head vector in place, GPT-NeoX style (pairs
/// `i, i + d/2`), as Qwen models use it.
pub fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    for (i, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
        let (x0, x1) = (*a, *b);
        *a = x0 * cos[i] - x1 * sin[i];
        *b = x0 * sin[i] + x1 * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team::with_team;

    /// A deterministic pseudo-random matrix in `[-scale, scale]`.
    fn matrix(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0) * scale)
            .collect()
    }

    /// Packs `w` as ggml's Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles).
    fn pack_q41(w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in w.chunks_exact(BLOCK) {
            let lo = b.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = half::f16::from_f32((hi - lo) / 15.0);
            let m = half::f16::from_f32(lo);
            let (df, mf) = (d.to_f32(), m.to_f32());
            let code = |x: f32| ((x - mf) / df).round().clamp(0.0, 15.0) as u8;
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            for j in 0..16 {
                out.push(code(b[j]) | (code(b[j + 16]) << 4));
            }
        }
        out
    }

    /// Dequantizes what [`pack_q41`] wrote.
    fn unpack_q41(raw: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in raw.chunks_exact(20) {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            let m = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
            let q = &b[4..];
            out.extend((0..16).map(|j| d * (q[j] & 15) as f32 + m));
            out.extend((0..16).map(|j| d * (q[j] >> 4) as f32 + m));
        }
        out
    }

    /// Checks `m · x` against the plain product of the weights `w` it stands
    /// for: within the activations' quantization error, the same for every
    /// batch size and thread count, and equal to the portable kernel.
    fn check(m: &DecodeMat, w: &[f32], rows: usize, cols: usize) {
        let n = 6;
        let xs = matrix(n * cols, 3, 1.0);
        let mut x = Q8Rows::default();
        x.set(&xs, n, cols);
        let mut all = vec![0f32; n * rows];
        with_team(1, |t| matmul_q8(t, &x, &mut [(m, &mut all)]));
        let mut generic = vec![0f32; rows * n];
        m.rows_q8_generic(0, &x, &mut generic);
        for s in 0..n {
            let xr = &xs[s * cols..(s + 1) * cols];
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                let want: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                let got = all[s * rows + r];
                // Each activation is off by at most half a step (max|x| / 254).
                let bound = wr.iter().map(|v| v.abs()).sum::<f32>() / 254.0;
                assert!(
                    (got - want).abs() <= bound + 1e-4,
                    "row {r} seq {s}: {got} vs {want}"
                );
                assert_eq!(got, generic[r * n + s], "SIMD vs portable, row {r} seq {s}");
            }
            // Alone, and on 2 threads: the very same numbers.
            for threads in [1, 2] {
                let mut one = Q8Rows::default();
                one.set(xr, 1, cols);
                let mut ys = vec![0f32; rows];
                with_team(threads, |t| matmul_q8(t, &one, &mut [(m, &mut ys)]));
                assert_eq!(
                    ys,
                    all[s * rows..(s + 1) * rows],
                    "seq {s}, {threads} threads"
                );
            }
        }
        // The AVX2 kernel too, where the dispatch picked VNNI.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let mut avx2 = vec![0f32; rows * n];
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe {
                match m {
                    DecodeMat::Q8(w) => x86::q8_avx2(w, 0, &x, &mut avx2),
                    DecodeMat::Q41(w) => x86::q41_avx2(w, 0, &x, &mut avx2),
                }
            }
            assert_eq!(avx2, generic, "AVX2 vs portable");
        }
    }

    #[test]
    fn q8_weights_match_a_plain_product() {
        let (rows, cols) = (37, 96);
        let w = matrix(rows * cols, 1, 0.3);
        let m = Q8Mat::from_f32(&w, rows, cols).unwrap();
        check(&DecodeMat::Q8(m), &w, rows, cols);
        assert!(Q8Mat::from_f32(&w[..rows * 30], rows, 30).is_none());
    }

    #[test]
    fn q41_weights_match_a_plain_product() {
        let (rows, cols) = (37, 96);
        let raw = pack_q41(&matrix(rows * cols, 2, 0.3));
        let w = unpack_q41(&raw);
        let m = Q41Mat::from_ggml(&raw, rows, cols).unwrap();
        check(&DecodeMat::Q41(m), &w, rows, cols);
        assert!(Q41Mat::from_ggml(&raw[1..], rows, cols).is_none());
    }

    #[test]
    fn norm_rope_and_dot_by_hand() {
        let mut out = [0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let inv = 1.0 / (12.5f32).sqrt();
        assert!((out[0] - 3.0 * inv).abs() < 1e-6 && (out[1] - 8.0 * inv).abs() < 1e-6);
        let mut x = [1.0, 0.0, 0.0, 2.0];
        rope_interleaved(&mut x, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(x, [0.0, 1.0, 0.0, 2.0]);
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }
}
