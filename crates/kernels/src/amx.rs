//! A matrix product on Intel AMX tiles, at f32 accuracy from bf16 parts.
//!
//! AMX multiplies bf16 tiles into f32 accumulators: one `tdpbf16ps` is a
//! 16 × 32 by 32 × 16 product, 16 times the multiply-adds per cycle of an
//! AVX-512 f32 FMA. bf16 alone keeps 8 bits of each value, far from the f32
//! the embedder's parity with sentence-transformers needs, so each value is
//! split into two bf16 parts, `x ≈ hi + lo` (hi = x rounded to bf16, lo = the
//! rest rounded to bf16: 16 bits together), and the product is
//! `a_hi·b_hi + a_hi·b_lo + a_lo·b_hi` (the dropped `a_lo·b_lo` is ~2⁻¹⁸ of
//! each term). That is three tile products where f32 takes one, and still
//! ~5 times the f32 rate per cycle. [`Passes::One`] keeps only `a_hi·b_hi`
//! (for measurements; it is off by ~1e-3 relative).
//!
//! The instructions are written with `asm!`: Rust's AMX intrinsics are not
//! stable. Linux hands out the tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`available`] makes once.
//!
//! `C (m, n) = A (m, k) · Wᵀ + b` as in [`crate::gemm512`]: the weight is
//! packed once at load into tiles in the "VNNI" layout AMX wants (pairs of
//! consecutive k next to each other), the activations at each call.

use crate::team::{SharedOut, Team, part_range};

/// bf16 values per tile row (64 bytes).
const TK: usize = 32;
/// Values in one tile (16 rows × 32).
const TILE: usize = 16 * TK;

/// How many bf16 tile products make one f32 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passes {
    /// `a_hi·b_hi` only (bf16 accuracy); the tests use it to show that
    /// the other two passes matter.
    #[cfg_attr(not(test), allow(dead_code))]
    One,
    /// `a_hi·b_hi + a_hi·b_lo + a_lo·b_hi` (f32 accuracy, to ~1e-6).
    Three,
}

/// A linear layer's weight in AMX tiles.
pub struct AmxLinear {
    n: usize,
    k: usize,
    /// `ceil(k / 32)` steps of 32 along k.
    steps: usize,
    /// For each 16-column tile `j` and step `s`: the hi tile, then the lo
    /// tile, at `((j * steps + s) * 2 + part) * TILE`.
    b: Vec<u16>,
    bias: Vec<f32>,
    passes: Passes,
}

/// `x` rounded to the nearest bf16 (ties to even); finite inputs only.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `(hi, lo)` with `hi + lo ≈ x` to 16 bits.
#[inline(always)]
fn split(x: f32) -> (u16, u16) {
    let hi = bf16_bits(x);
    let rest = x - f32::from_bits((hi as u32) << 16);
    (hi, bf16_bits(rest))
}

impl AmxLinear {
    /// Packs `w` (`(n, k)` row-major) and `bias` (`n`); `None` unless AMX is
    /// usable here and `n` is a multiple of 32.
    pub fn new(w: &[f32], bias: &[f32], n: usize, k: usize, passes: Passes) -> Option<AmxLinear> {
        if !available() || !n.is_multiple_of(32) || k == 0 || w.len() != n * k || bias.len() != n {
            return None;
        }
        let steps = k.div_ceil(TK);
        let mut b = vec![0u16; n / 16 * steps * 2 * TILE];
        for j in 0..n / 16 {
            for s in 0..steps {
                let at = (j * steps + s) * 2 * TILE;
                // Row r of a B tile holds, for each of the 16 columns, the
                // pair (k = 2r, 2r + 1) of this step.
                for r in 0..16 {
                    for c in 0..16 {
                        for p in 0..2 {
                            let kk = s * TK + 2 * r + p;
                            if kk < k {
                                let (hi, lo) = split(w[(j * 16 + c) * k + kk]);
                                b[at + r * TK + 2 * c + p] = hi;
                                b[at + TILE + r * TK + 2 * c + p] = lo;
                            }
                        }
                    }
                }
            }
        }
        Some(AmxLinear {
            n,
            k,
            steps,
            b,
            bias: bias.to_vec(),
            passes,
        })
    }

    /// `c (m, n) = post(a (m, k) · Wᵀ + b)`; column pairs of tiles split
    /// over the team. `post` (an activation, say) runs on each block of up
    /// to 32 × 32 values before it is written out, while it is in cache.
    pub fn forward(
        &self,
        team: &Team<'_>,
        a: &[f32],
        m: usize,
        c: &mut [f32],
        post: Option<fn(&mut [f32])>,
    ) {
        assert!(a.len() == m * self.k && c.len() == m * self.n, "amx shapes");
        if m == 0 {
            return;
        }
        let steps = self.steps;
        // The activations as tiles: 16-row tile `i`, step `s`, part (hi, lo)
        // at `((i * steps + s) * 2 + part) * TILE`, in a buffer kept per
        // calling thread (no allocation, no page faults per call). Rows are
        // padded to a multiple of 32; padding rows keep whatever the buffer
        // held (rows are independent, and their products are dropped).
        let row_tiles = m.div_ceil(32) * 2;
        thread_local! {
            static TILES: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        TILES.with(|buf| {
            let mut ap = buf.borrow_mut();
            let len = row_tiles * steps * 2 * TILE;
            if ap.len() < len {
                ap.resize(len, 0);
            }
            self.pack(team, a, m, &mut ap[..len]);
            self.product(team, &ap[..len], m, c, post);
        });
    }

    /// Splits `a` (`(m, k)`) into hi and lo bf16 tiles (see `forward`).
    fn pack(&self, team: &Team<'_>, a: &[f32], m: usize, ap: &mut [u16]) {
        let (k, steps) = (self.k, self.steps);
        let row_tiles = ap.len() / (steps * 2 * TILE);
        let shared = SharedOut::new(ap);
        team.run(&|part| {
            let (lo, hi) = part_range(row_tiles, part, team.threads());
            for i in lo..hi {
                // SAFETY: row tile `i` belongs to this part alone.
                let dst = unsafe { shared.slice(i * steps * 2 * TILE, steps * 2 * TILE) };
                for r in 0..16 {
                    let row = i * 16 + r;
                    if row >= m {
                        break;
                    }
                    for (s, xs) in a[row * k..(row + 1) * k].chunks(TK).enumerate() {
                        let at = s * 2 * TILE + r * TK;
                        let (hi, lo) = dst[at..at + TILE + TK].split_at_mut(TILE);
                        for ((h, l), &x) in hi[..TK].iter_mut().zip(&mut lo[..]).zip(xs) {
                            (*h, *l) = split(x);
                        }
                        // The last step's columns past `k` multiply zeros.
                        hi[xs.len()..TK].fill(0);
                        lo[xs.len()..].fill(0);
                    }
                }
            }
        });
    }

    /// `c = ap · Wᵀ + b` from the packed activations.
    fn product(
        &self,
        team: &Team<'_>,
        ap: &[u16],
        m: usize,
        c: &mut [f32],
        post: Option<fn(&mut [f32])>,
    ) {
        let steps = self.steps;
        let row_tiles = ap.len() / (steps * 2 * TILE);
        let pairs = self.n / 32;
        // Row pairs of tiles per block: the block's activations (256 KiB)
        // stay in L2 while the column pairs of this part pass over them.
        let pair_bytes = 32 * steps * TK * 2 * 2;
        let block = (256 * 1024 / pair_bytes).max(1);
        let out = SharedOut::new(c);
        team.run(&|part| {
            let (lo, hi) = part_range(pairs, part, team.threads());
            if lo == hi {
                return;
            }
            let mut scratch = Scratch([0f32; 32 * 32]);
            let _tiles = TileConfig::load();
            for rp0 in (0..row_tiles / 2).step_by(block) {
                let rp1 = (rp0 + block).min(row_tiles / 2);
                for jp in lo..hi {
                    let bp = &self.b[jp * 2 * steps * 2 * TILE..];
                    for rp in rp0..rp1 {
                        let a0 = &ap[rp * 2 * steps * 2 * TILE..];
                        // SAFETY: AMX is configured (`_tiles`); each pointer
                        // has `steps` hi/lo tile pairs from its start: row
                        // tiles 2rp and 2rp + 1, column tiles 2jp and 2jp + 1.
                        unsafe {
                            block_32x32(
                                a0.as_ptr(),
                                a0.as_ptr().add(steps * 2 * TILE),
                                bp.as_ptr(),
                                bp.as_ptr().add(steps * 2 * TILE),
                                steps,
                                self.passes,
                                scratch.0.as_mut_ptr(),
                            )
                        };
                        let bias = &self.bias[jp * 32..jp * 32 + 32];
                        let valid = (m - rp * 32).min(32);
                        let block = &mut scratch.0[..valid * 32];
                        for row in block.chunks_exact_mut(32) {
                            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                        }
                        if let Some(f) = post {
                            f(block);
                        }
                        for (r, src) in block.chunks_exact(32).enumerate() {
                            // SAFETY: columns `jp * 32 .. + 32` belong to
                            // this part alone.
                            let dst = unsafe { out.slice((rp * 32 + r) * self.n + jp * 32, 32) };
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
        });
    }
}

/// 64-byte aligned room for one 32 × 32 block of `C`.
#[repr(C, align(64))]
struct Scratch([f32; 32 * 32]);

/// The tile configuration (all 8 tiles 16 rows × 64 bytes), loaded on this
/// thread for as long as the guard lives.
struct TileConfig;

impl TileConfig {
    fn load() -> TileConfig {
        #[repr(C, align(64))]
        struct Cfg([u8; 64]);
        let mut cfg = Cfg([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row (little-endian u16)
            cfg.0[48 + t] = 16; // rows
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is usable (every `AmxLinear` checked `available`);
        // the configuration is 64 valid bytes.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack))
        };
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: releases the state `load` configured.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        };
    }
}

/// The loop of [`block_32x32`]: zeroes the four `C` tiles, runs `steps`
/// steps of `a_hi·b_hi` followed by `$more` (the other passes, which may
/// reload tmm4-7), and stores `C`.
///
/// tmm0..3: C (rows 0-15 × cols 0-15, 0-15 × 16-31, 16-31 × 0-15,
/// 16-31 × 16-31); tmm4/5: A rows 0-15/16-31; tmm6/7: B cols 0-15/16-31.
/// Each step moves 2 KiB (one hi and one lo tile) along every operand. Each
/// load comes as soon as the products that read its register are issued
/// (tile registers are not renamed), so loads overlap the other products.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_loop {
    ($a0:expr, $a1:expr, $b0:expr, $b1:expr, $steps:expr, $c:expr; $($more:literal),* $(,)?) => {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            $($more,)*
            "add {a0}, 2048",
            "add {a1}, 2048",
            "add {b0}, 2048",
            "add {b1}, 2048",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c} + {cs}*1 + 2048], tmm2",
            "tilestored [{c} + {cs}*1 + 2112], tmm3",
            a0 = inout(reg) $a0 => _,
            a1 = inout(reg) $a1 => _,
            b0 = inout(reg) $b0 => _,
            b1 = inout(reg) $b1 => _,
            n = inout(reg) $steps => _,
            s = in(reg) 64usize,
            c = in(reg) $c,
            cs = in(reg) 128usize,
            options(nostack),
        )
    };
}

/// The 32 × 32 block of `C` from row tiles `a0`, `a1` and column tiles `b0`,
/// `b1` (each `steps` pairs of hi and lo tiles of 1 KiB), written to `c`
/// (32 rows of 128 bytes).
///
/// # Safety
/// The tile configuration of [`TileConfig`] is loaded; the pointers cover
/// what is read and written.
#[cfg(target_arch = "x86_64")]
unsafe fn block_32x32(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    passes: Passes,
    c: *mut f32,
) {
    // SAFETY: the caller's promise.
    unsafe {
        match passes {
            Passes::One => tile_loop!(a0, a1, b0, b1, steps, c;),
            Passes::Three => tile_loop!(a0, a1, b0, b1, steps, c;
                "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
            ),
        }
    }
}

/// Stands in for the AMX block off x86_64.
///
/// # Safety
/// Never called: `AmxLinear::new` returns `None` off x86_64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_32x32(
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: usize,
    _: Passes,
    _: *mut f32,
) {
    unreachable!("AmxLinear::new returns None off x86_64")
}

/// Whether this CPU has AMX-BF16 and the kernel lets this process use the
/// tiles (asked once per process). `LLMREC_NO_AMX=1` turns it off.
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::env::var_os("LLMREC_NO_AMX").is_none_or(|v| v.is_empty() || v == "0")
            && cpu_has_amx()
            && request_tiles()
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    // SAFETY: cpuid is available on every x86_64 CPU; leaf 7 exists when the
    // maximum leaf says so. (`__cpuid` is a safe fn in newer Rust than the
    // MSRV.)
    #[allow(unused_unsafe)]
    unsafe {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        // AMX-BF16 is bit 22, AMX-TILE bit 24.
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: without it the first
/// tile instruction kills the process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team::with_team;

    #[test]
    fn split_keeps_sixteen_bits() {
        for x in [1.0f32, -2.718_281_7, 1e-3, 123456.79, 0.0, -7.0e-6] {
            let (h, l) = split(x);
            let back = f32::from_bits((h as u32) << 16) + f32::from_bits((l as u32) << 16);
            assert!(
                (back - x).abs() <= x.abs() * 2f32.powi(-16),
                "{x} -> {back}"
            );
        }
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even.
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    }

    #[test]
    fn amx_product_matches_a_plain_one() {
        if !llmrec_testkit::cpu_feature("amx", available()) {
            // No AMX here: the dispatcher must not offer the kernel either.
            assert!(AmxLinear::new(&[1.0; 512], &[0.0; 32], 32, 16, Passes::One).is_none());
            return;
        }
        // k not a multiple of 32, m not a multiple of 16, several row blocks.
        let (n, k) = (96, 75);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 53.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
        let three = AmxLinear::new(&w, &b, n, k, Passes::Three).unwrap();
        let one = AmxLinear::new(&w, &b, n, k, Passes::One).unwrap();
        // A wider product of infinities first leaves inf and NaN in the
        // reused activation buffer, where the k = 75 products must read
        // zeros (the weights there are zero, and NaN · 0 is NaN).
        let wide =
            AmxLinear::new(&vec![1.0; 32 * 128], &[0.0; 32], 32, 128, Passes::Three).unwrap();
        let mut sink = vec![0f32; 70 * 32];
        with_team(1, |t| {
            wide.forward(t, &vec![f32::INFINITY; 70 * 128], 70, &mut sink, None)
        });
        for m in [1, 17, 40, 70] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.3)
                .collect();
            for threads in [1, 2] {
                let (mut c3, mut c1) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                with_team(threads, |t| {
                    three.forward(t, &a, m, &mut c3, None);
                    one.forward(
                        t,
                        &a,
                        m,
                        &mut c1,
                        Some(|xs| xs.iter_mut().for_each(|x| *x = -*x)),
                    );
                });
                let (mut worst3, mut worst1) = (0f64, 0f64);
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|kk| a[r * k + kk] as f64 * w[j * k + kk] as f64)
                            .sum::<f64>()
                            + b[j] as f64;
                        worst3 = worst3.max((c3[r * n + j] as f64 - want).abs());
                        // `one` negates its output (`post`).
                        worst1 = worst1.max((-c1[r * n + j] as f64 - want).abs());
                    }
                }
                // Terms are ~1 and there are 75 of them: f32 rounding alone
                // is ~1e-5; one bf16 pass is ~1e-2 off.
                assert!(worst3 < 1e-4, "m {m}: three passes off by {worst3}");
                assert!(
                    worst1 > 1e-3 && worst1 < 0.2,
                    "m {m}: one pass off by {worst1}"
                );
            }
        }
        assert!(AmxLinear::new(&w[..80 * k], &b[..80], 80, k, Passes::Three).is_none());
    }
}
