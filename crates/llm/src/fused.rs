//! Fused CPU kernels for token-by-token decoding.
//!
//! A decoding step runs every weight matrix on one new row per sequence. With
//! candle's ops that is ~25 small ops per layer, each allocating its output;
//! here a step is plain loops over Q8_0 weights (32 int8 codes and one f32
//! scale per block) and f32 activations. Unlike ggml's Q8_0 kernels the
//! activations are not quantized, so results sit closer to the exact f32 path.

use rayon::prelude::*;

/// Values per quantization block.
pub(crate) const BLOCK: usize = 32;

/// A `(rows, cols)` matrix in Q8_0: per block of 32 values of a row, one scale
/// `d` and 32 codes `q` with `value ≈ d * q`.
pub(crate) struct Q8Mat {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    q: Vec<i8>,
}

impl Q8Mat {
    /// Quantizes a row-major `(rows, cols)` f32 matrix (`cols` a multiple of
    /// 32) as ggml's Q8_0 does: `d = max|x| / 127`, `q = round(x / d)`.
    pub(crate) fn from_f32(w: &[f32], rows: usize, cols: usize) -> Option<Q8Mat> {
        if cols % BLOCK != 0 || w.len() != rows * cols {
            return None;
        }
        let mut d = Vec::with_capacity(w.len() / BLOCK);
        let mut q = Vec::with_capacity(w.len());
        for b in w.chunks_exact(BLOCK) {
            let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            d.push(scale);
            q.extend(b.iter().map(|x| (x * inv).round() as i8));
        }
        Some(Q8Mat { rows, cols, d, q })
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// `ys (n, rows) = xs (n, cols) · Wᵀ`, rows split over `threads`.
    pub(crate) fn matmul(&self, xs: &[f32], n: usize, ys: &mut [f32], threads: usize) {
        debug_assert_eq!(xs.len(), n * self.cols);
        debug_assert_eq!(ys.len(), n * self.rows);
        if n == 1 {
            // One sequence: the output is already in weight-row order.
            self.rows_par(xs, 1, ys, threads);
            return;
        }
        // Row-major by weight row (rows, n), so each thread writes one stretch.
        let mut t = vec![0f32; self.rows * n];
        self.rows_par(xs, n, &mut t, threads);
        for r in 0..self.rows {
            for s in 0..n {
                ys[s * self.rows + r] = t[r * n + s];
            }
        }
    }

    /// All rows into `t` (`rows`, `n`), split over `threads`.
    fn rows_par(&self, xs: &[f32], n: usize, t: &mut [f32], threads: usize) {
        let per = self.rows.div_ceil(threads.max(1) * 4).max(16);
        if threads > 1 {
            t.par_chunks_mut(per * n)
                .enumerate()
                .for_each(|(c, out)| self.rows_into(c * per, xs, n, out));
        } else {
            self.rows_into(0, xs, n, t);
        }
    }

    /// Rows `r0..` (as many as `out` holds, `n` values each) of the product.
    fn rows_into(&self, r0: usize, xs: &[f32], n: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { self.rows_into_avx2(r0, xs, n, out) };
            }
        }
        self.rows_into_generic(r0, xs, n, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_into_avx2(&self, r0: usize, xs: &[f32], n: usize, out: &mut [f32]) {
        self.rows_into_generic(r0, xs, n, out)
    }

    #[inline(always)]
    fn rows_into_generic(&self, r0: usize, xs: &[f32], n: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let mut w = [0f32; BLOCK];
        // Up to 4 sequences at a time, 8 lanes each; one horizontal sum per row.
        for (i, res) in out.chunks_exact_mut(n).enumerate() {
            let r = r0 + i;
            let q = &self.q[r * self.cols..(r + 1) * self.cols];
            let d = &self.d[r * nb..(r + 1) * nb];
            for s0 in (0..n).step_by(4) {
                let m = (n - s0).min(4);
                let mut acc = [[0f32; 8]; 4];
                for b in 0..nb {
                    let db = d[b];
                    for (wj, &qj) in w.iter_mut().zip(&q[b * BLOCK..(b + 1) * BLOCK]) {
                        *wj = qj as f32 * db;
                    }
                    for (j, a) in acc.iter_mut().enumerate().take(m) {
                        let off = (s0 + j) * self.cols + b * BLOCK;
                        let x = &xs[off..off + BLOCK];
                        for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
                            for k in 0..8 {
                                a[k] += wc[k] * xc[k];
                            }
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate().take(m) {
                    res[s0 + j] = a.iter().sum();
                }
            }
        }
    }
}

/// Dot product of two equal-length slices, in 8 lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Interleaved rotary embedding of one head vector in place (pairs `2i, 2i+1`).
pub(crate) fn rope_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[i] - b * sin[i];
        pair[1] = a * sin[i] + b * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_matmul_matches_a_plain_product_to_quantization_error() {
        let (rows, cols, n) = (37, 64, 3);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let xs: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let m = Q8Mat::from_f32(&w, rows, cols).unwrap();
        for threads in [1, 2] {
            let mut ys = vec![0f32; n * rows];
            m.matmul(&xs, n, &mut ys, threads);
            for s in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * xs[s * cols + c]).sum();
                    let got = ys[s * rows + r];
                    // Each weight is off by at most half a step (max|w| / 254).
                    let bound = 0.3 / 254.0
                        * xs[s * cols..(s + 1) * cols]
                            .iter()
                            .map(|x| x.abs())
                            .sum::<f32>();
                    assert!(
                        (got - want).abs() <= bound + 1e-5,
                        "row {r} seq {s}: {got} vs {want}"
                    );
                }
            }
        }
        assert!(Q8Mat::from_f32(&w[..rows * 30], rows, 30).is_none());
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
