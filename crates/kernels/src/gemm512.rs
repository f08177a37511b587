//! An f32 matrix product with AVX-512 for the linear layers of the embedder
//! and of the local LLM's exact path (prompts, scoring).
//!
//! The `gemm` crate that candle uses keeps its AVX-512 kernels behind a
//! nightly-only feature, so on stable Rust candle multiplies with 8-lane AVX2
//! kernels even on CPUs with 16 lanes. This kernel computes
//! `C (m, n) = A (m, k) · Wᵀ + b` for a weight `W (n, k)` packed once at load
//! into panels of 16 output columns, 6 rows × 64 columns of `C` at a time
//! (24 of the 32 vector registers accumulate). It is an exact f32 product
//! (only the order of the additions differs from a plain loop).

use crate::team::{Team, part_range};

/// Output columns per panel (one 16-lane vector).
const PANEL: usize = 16;
/// Panels per tile (64 columns).
const NP: usize = 4;
/// Rows per tile.
const MR: usize = 6;
/// Rows per block (a multiple of `MR`): 48 rows of a 1536-wide input are
/// 288 KiB, which stay in L2 while the tiles of a part pass over them.
const MC: usize = 48;

/// A linear layer's weight, packed for [`PackedLinear::forward`].
pub struct PackedLinear {
    n: usize,
    k: usize,
    /// `n / 16` panels, each `k × 16` values (k-major).
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `w` (`(n, k)` row-major) and `bias` (`n`); `None` unless the CPU
    /// has AVX-512F and `n` is a multiple of 16.
    pub fn new(w: &[f32], bias: &[f32], n: usize, k: usize) -> Option<PackedLinear> {
        if !available() || !n.is_multiple_of(PANEL) || w.len() != n * k || bias.len() != n {
            return None;
        }
        let mut panels = vec![0f32; n * k];
        for p in 0..n / PANEL {
            for kk in 0..k {
                for j in 0..PANEL {
                    panels[(p * k + kk) * PANEL + j] = w[(p * PANEL + j) * k + kk];
                }
            }
        }
        Some(PackedLinear {
            n,
            k,
            panels,
            bias: bias.to_vec(),
        })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `c (m, n) = a (m, k) · Wᵀ + b`, column tiles split over the team.
    pub fn forward(&self, team: &Team<'_>, a: &[f32], m: usize, c: &mut [f32]) {
        assert!(
            a.len() == m * self.k && c.len() == m * self.n,
            "gemm512 shapes"
        );
        let tiles = self.n.div_ceil(NP * PANEL);
        let out = crate::team::SharedOut::new(c);
        team.run(&|part| {
            let (lo, hi) = part_range(tiles, part, team.threads());
            // Rows in blocks that stay in L2 while this part's tiles pass.
            for r0 in (0..m).step_by(MC) {
                let rows = (m - r0).min(MC);
                for t in lo..hi {
                    let p0 = t * NP;
                    let np = (self.n / PANEL - p0).min(NP);
                    // SAFETY: AVX-512F is present (checked in `new`); tile
                    // `t` owns columns `p0 * 16 .. (p0 + np) * 16` of `c`,
                    // which no other part writes.
                    unsafe { self.columns(a, r0, rows, p0, np, &out) };
                }
            }
        });
    }

    /// Columns of panels `p0..p0 + np` for rows `r0..r0 + m`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; no other thread touches these columns of `c`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn columns(
        &self,
        a: &[f32],
        r0: usize,
        m: usize,
        p0: usize,
        np: usize,
        c: &crate::team::SharedOut,
    ) {
        let mut i = r0;
        while i < r0 + m {
            let rows = (r0 + m - i).min(MR);
            // SAFETY: forwarded from the caller.
            unsafe {
                match (rows, np) {
                    (MR, NP) => x86::tile::<MR, NP>(self, a, i, p0, c),
                    (MR, 1) => x86::tile::<MR, 1>(self, a, i, p0, c),
                    (MR, 2) => x86::tile::<MR, 2>(self, a, i, p0, c),
                    (MR, 3) => x86::tile::<MR, 3>(self, a, i, p0, c),
                    (_, np) => {
                        for r in i..i + rows {
                            for q in p0..p0 + np {
                                x86::tile::<1, 1>(self, a, r, q, c);
                            }
                        }
                    }
                }
            }
            i += rows;
        }
    }

    /// Stands in for the AVX-512 columns off x86_64.
    ///
    /// # Safety
    /// Never called: `PackedLinear::new` returns `None` off x86_64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn columns(
        &self,
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: &crate::team::SharedOut,
    ) {
        unreachable!("PackedLinear::new returns None off x86_64")
    }
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, PackedLinear};
    use crate::team::SharedOut;
    use std::arch::x86_64::*;

    /// Rows `i..i + R` times panels `p0..p0 + P` (R × 16P values of `c`).
    ///
    /// # Safety
    /// AVX-512F; rows and panels in bounds; these values of `c` are ours.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize, const P: usize>(
        w: &PackedLinear,
        a: &[f32],
        i: usize,
        p0: usize,
        c: &SharedOut,
    ) {
        let (k, n) = (w.k, w.n);
        assert!((i + R) * k <= a.len() && (p0 + P) * PANEL <= n);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for row in acc.iter_mut() {
            for (pj, v) in row.iter_mut().enumerate() {
                // SAFETY: `(p0 + pj) * 16 + 16 <= n = bias.len()` (asserted).
                *v = unsafe { _mm512_loadu_ps(w.bias.as_ptr().add((p0 + pj) * PANEL)) };
            }
        }
        let ap = a.as_ptr();
        let bp = w.panels.as_ptr();
        for kk in 0..k {
            let mut b = [_mm512_setzero_ps(); P];
            for (pj, v) in b.iter_mut().enumerate() {
                // SAFETY: panel `p0 + pj` holds `k × 16` values from
                // `(p0 + pj) * k * 16`, in bounds (asserted).
                *v = unsafe { _mm512_loadu_ps(bp.add(((p0 + pj) * k + kk) * PANEL)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row `i + r` of `a`, column `kk`: in bounds (asserted).
                let av = _mm512_set1_ps(unsafe { *ap.add((i + r) * k + kk) });
                for (pj, v) in row.iter_mut().enumerate() {
                    *v = _mm512_fmadd_ps(av, b[pj], *v);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (pj, v) in row.iter().enumerate() {
                // SAFETY: 16 values of row `i + r` from column `(p0 + pj) * 16`:
                // in bounds (asserted by the slice) and ours (the caller's promise).
                unsafe {
                    let dst = c.slice((i + r) * n + (p0 + pj) * PANEL, PANEL);
                    _mm512_storeu_ps(dst.as_mut_ptr(), *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team::with_team;

    #[test]
    fn packed_product_matches_a_plain_one() {
        let (n, k) = (80, 37);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
        if !llmrec_testkit::cpu_feature("avx512", available()) {
            // No AVX-512 here: the kernel must not be offered.
            assert!(PackedLinear::new(&w, &b, n, k).is_none());
            return;
        }
        let lin = PackedLinear::new(&w, &b, n, k).unwrap();
        for m in [1, 5, 6, 13] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            for threads in [1, 2] {
                let mut c = vec![f32::NAN; m * n];
                with_team(threads, |t| lin.forward(t, &a, m, &mut c));
                for r in 0..m {
                    for j in 0..n {
                        let want: f32 =
                            (0..k).map(|kk| a[r * k + kk] * w[j * k + kk]).sum::<f32>() + b[j];
                        let got = c[r * n + j];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "m {m} row {r} col {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        assert!(PackedLinear::new(&w[..70 * k], &b[..70], 70, k).is_none());
    }
}
