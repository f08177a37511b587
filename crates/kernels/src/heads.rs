//! Fused loss heads on the CPU: softmax cross-entropy over given logits, and the
//! softmax and binary heads that never materialise the full `(N, n_items)` logits.
//! Each computes its gradient in the same pass.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::{contiguous_f32, fold_in_order};

/// Per-row `logsumexp(x) - (1-eps)·x[target] - eps·mean(x)` of `logits` `(N, V)`,
/// contiguous f32 on the CPU, with its fused backward
/// `softmax(x) - (1-eps)·onehot(target) - eps/V`.
pub fn cross_entropy_rows(
    logits: &Tensor,
    targets: &[u32],
    eps: f32,
) -> candle_core::Result<Tensor> {
    logits.apply_op1(FusedXent {
        targets: targets.to_vec(),
        eps,
    })
}

/// Per-row `logsumexp(x) - (1-eps)·x[target] - eps·mean(x)`; backward
/// `softmax(x) - (1-eps)·onehot(target) - eps/V`.
pub struct FusedXent {
    targets: Vec<u32>,
    eps: f32,
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

/// The part of a row's loss besides `logsumexp`: `x[t]`, or with smoothing
/// `(1-eps)·x[t] + eps·mean(x)`.
fn target_term(row: &[f32], t: usize, eps: f32) -> f32 {
    if eps == 0.0 {
        row[t]
    } else {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        (1.0 - eps) * row[t] + eps * mean
    }
}

impl candle_core::CustomOp1 for FusedXent {
    fn name(&self) -> &'static str {
        "llmrec-fused-xent"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!("{} targets for {n} rows", self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target {t} out of range for {v} classes");
        }
        let x = contiguous_f32(s, l)?;
        let eps = self.eps;
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - target_term(row, t as usize, eps))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let arg = arg.contiguous()?;
        // lse = loss + target term; pack (loss, grad) as (N, 2) for the gradient kernel.
        let aux = Tensor::stack(&[res, grad_res], 1)?.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(
            &aux,
            &FusedXentGrad {
                targets: self.targets.clone(),
                eps: self.eps,
            },
        )?))
    }
}

struct FusedXentGrad {
    targets: Vec<u32>,
    eps: f32,
}

impl candle_core::CustomOp2 for FusedXentGrad {
    fn name(&self) -> &'static str {
        "llmrec-fused-xent-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let x = contiguous_f32(s1, l1)?;
        let aux = contiguous_f32(s2, l2)?;
        let eps = self.eps;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .enumerate()
            .for_each(|(r, (g, row))| {
                let t = self.targets[r] as usize;
                let lse = aux[2 * r] + target_term(row, t, eps);
                let scale = aux[2 * r + 1];
                if eps == 0.0 {
                    for (gi, &xi) in g.iter_mut().zip(row) {
                        *gi = (xi - lse).exp() * scale;
                    }
                    g[t] -= scale;
                } else {
                    let uniform = eps / v as f32;
                    for (gi, &xi) in g.iter_mut().zip(row) {
                        *gi = ((xi - lse).exp() - uniform) * scale;
                    }
                    g[t] -= (1.0 - eps) * scale;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

/// Rows of logits one task of [`softmax_head`] holds at a time.
const HEAD_CHUNK: usize = 64;

/// Mean softmax cross-entropy of the scores `h · E^T` against `targets`, where `h` is
/// `(N, d)` and `E` is the item table `emb` `(n_items + 1, d)` without its padding row 0
/// (dense item `i` is row `i + 1`). CPU and f32 only.
///
/// The `(N, n_items)` logits are never materialised: rows are processed in chunks of 64,
/// each computing its logits, log-softmax, loss and `softmax - onehot` in one scratch
/// buffer, then `dL/dh = G E` and `dL/dE += G^T h`. The gradients are computed in the
/// forward pass (as the backward would need the logits again) and kept until backward,
/// so use this only to train.
pub fn softmax_head(h: &Tensor, emb: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    h.contiguous()?.apply_op2(
        &emb.contiguous()?,
        SoftmaxHead {
            targets: targets.to_vec(),
            grads: std::sync::Mutex::new(None),
        },
    )
}

/// Gradients kept from a fused head's forward pass: `dL/dh`, `dL/demb`.
type HeadGrads = std::sync::Mutex<Option<(Vec<f32>, Vec<f32>)>>;

/// Keeps a head's gradients for its backward pass and returns its mean loss over `n`
/// rows as the op's scalar output.
fn keep_grads(
    grads: &HeadGrads,
    grad_h: Vec<f32>,
    grad_emb: Vec<f32>,
    loss: f64,
    n: usize,
) -> candle_core::Result<(CpuStorage, Shape)> {
    *grads
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Some((grad_h, grad_emb));
    let loss = (loss / n.max(1) as f64) as f32;
    Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
}

struct SoftmaxHead {
    targets: Vec<u32>,
    grads: HeadGrads,
}

/// `(N, d)` and `(V + 1, d)` of a head's inputs.
fn head_dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, d) = l1.shape().dims2()?;
    let (rows, d2) = l2.shape().dims2()?;
    if d2 != d || rows < 2 {
        candle_core::bail!("head: hidden states {n}x{d} and item table {rows}x{d2} do not fit");
    }
    Ok((n, d, rows - 1))
}

fn add_into(mut a: (f64, Vec<f32>), b: (f64, Vec<f32>)) -> (f64, Vec<f32>) {
    if a.1.is_empty() {
        return b;
    }
    if !b.1.is_empty() {
        for (x, y) in a.1.iter_mut().zip(&b.1) {
            *x += y;
        }
    }
    a.0 += b.0;
    a
}

impl candle_core::CustomOp2 for SoftmaxHead {
    fn name(&self) -> &'static str {
        "llmrec-softmax-head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::nn::{exp_in_place, matmul, max_of};
        let (n, d, v) = head_dims(l1, l2)?;
        if self.targets.len() != n {
            candle_core::bail!("{} targets for {n} rows", self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target {t} out of range for {v} items");
        }
        let h = contiguous_f32(s1, l1)?;
        let emb = contiguous_f32(s2, l2)?;
        let items = &emb[d..];
        let inv_n = 1.0 / n.max(1) as f32;
        let mut grad_h = vec![0f32; n * d];
        let parts = fold_in_order(
            grad_h.par_chunks_mut(HEAD_CHUNK * d).enumerate(),
            || (0f64, Vec::new(), Vec::new()),
            |(mut loss, mut acc, mut buf): (f64, Vec<f32>, Vec<f32>), (c, gh)| {
                if acc.is_empty() {
                    acc = vec![0f32; v * d];
                    buf = vec![0f32; HEAD_CHUNK * v];
                }
                let r0 = c * HEAD_CHUNK;
                let rows = gh.len() / d;
                let hc = &h[r0 * d..(r0 + rows) * d];
                let g = &mut buf[..rows * v];
                matmul((rows, v, d), g, v, false, (hc, d, 1), (items, 1, d));
                for (i, row) in g.chunks_mut(v).enumerate() {
                    let t = self.targets[r0 + i] as usize;
                    let target = row[t];
                    let max = max_of(row);
                    let sum = exp_in_place(row, 1.0, max);
                    loss += (max + sum.ln() - target) as f64;
                    let scale = inv_n / sum;
                    for x in row.iter_mut() {
                        *x *= scale;
                    }
                    row[t] -= inv_n;
                }
                matmul((rows, d, v), gh, d, false, (g, v, 1), (items, d, 1));
                matmul((v, d, rows), &mut acc, d, true, (g, 1, v), (hc, d, 1));
                (loss, acc, buf)
            },
        );
        let (loss, acc) = parts
            .into_iter()
            .map(|(loss, acc, _)| (loss, acc))
            .fold((0.0, Vec::new()), add_into);
        let mut grad_emb = vec![0f32; (v + 1) * d];
        if !acc.is_empty() {
            grad_emb[d..].copy_from_slice(&acc);
        }
        keep_grads(&self.grads, grad_h, grad_emb, loss, n)
    }

    fn bwd(
        &self,
        h: &Tensor,
        emb: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        scaled_head_grads(&self.grads, h, emb, grad_res)
    }
}

/// The kept gradients times the upstream (scalar) gradient.
fn scaled_head_grads(
    grads: &HeadGrads,
    h: &Tensor,
    emb: &Tensor,
    grad_res: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let (gh, ge) = grads
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("fused head: backward before forward".into()))?;
    let s = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let scale = |mut g: Vec<f32>| {
        if s != 1.0 {
            for x in &mut g {
                *x *= s;
            }
        }
        g
    };
    Ok((
        Some(Tensor::from_vec(scale(gh), h.shape(), h.device())?),
        Some(Tensor::from_vec(scale(ge), emb.shape(), emb.device())?),
    ))
}

/// [`binary_loss`] of the candidate scores `h_r · E[c]`, fused: `candidates` holds, per
/// row of `h` `(N, d)`, the positive dense item followed by its negatives (`m` per row);
/// `emb` is the item table `(n_items + 1, d)` (dense item `i` is row `i + 1`). Computes
/// only the `N * m` dot products, never the full logits. CPU and f32 only; gradients are
/// computed in the forward pass and kept until backward, so use this only to train.
pub fn binary_head(
    h: &Tensor,
    emb: &Tensor,
    candidates: &[u32],
    m: usize,
    beta: f64,
) -> candle_core::Result<Tensor> {
    h.contiguous()?.apply_op2(
        &emb.contiguous()?,
        BinaryHead {
            candidates: candidates.to_vec(),
            m,
            beta: beta as f32,
            grads: std::sync::Mutex::new(None),
        },
    )
}

struct BinaryHead {
    candidates: Vec<u32>,
    m: usize,
    beta: f32,
    grads: HeadGrads,
}

/// Loss (summed) and gradients of rows `r0..` of a [`BinaryHead`] chunk: `dL/dh` into
/// `gh` (one row of `d` per row), `dL/demb` added to `acc`. Uses AVX2 and FMA where the
/// CPU has them.
fn binary_rows(
    op: &BinaryHead,
    hs: (&[f32], &[f32]),
    r0: usize,
    d: usize,
    gh: &mut [f32],
    acc: &mut [f32],
    inv_n: f32,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { binary_rows_avx2(op, hs, r0, d, gh, acc, inv_n) };
        }
    }
    binary_rows_generic(op, hs, r0, d, gh, acc, inv_n)
}

/// The binary head's rows compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn binary_rows_avx2(
    op: &BinaryHead,
    hs: (&[f32], &[f32]),
    r0: usize,
    d: usize,
    gh: &mut [f32],
    acc: &mut [f32],
    inv_n: f32,
) -> f64 {
    binary_rows_generic(op, hs, r0, d, gh, acc, inv_n)
}

#[inline(always)]
fn binary_rows_generic(
    op: &BinaryHead,
    (h, emb): (&[f32], &[f32]),
    r0: usize,
    d: usize,
    gh: &mut [f32],
    acc: &mut [f32],
    inv_n: f32,
) -> f64 {
    use crate::nn::{axpy, dot};
    let m = op.m;
    let mut loss = 0f64;
    for (i, ghr) in gh.chunks_mut(d).enumerate() {
        let r = r0 + i;
        let hr = &h[r * d..(r + 1) * d];
        for (j, &item) in op.candidates[r * m..(r + 1) * m].iter().enumerate() {
            let row = (item as usize + 1) * d;
            let e = &emb[row..row + d];
            let s = dot(hr, e);
            let g = if j == 0 {
                let (sp, sig) = softplus_sigmoid(-s);
                loss += (op.beta * sp) as f64;
                -op.beta * sig
            } else {
                let (sp, sig) = softplus_sigmoid(s);
                loss += sp as f64;
                sig
            } * inv_n;
            axpy(g, e, ghr);
            axpy(g, hr, &mut acc[row..row + d]);
        }
    }
    loss
}

/// `(softplus(x), sigmoid(x))`, stable.
fn softplus_sigmoid(x: f32) -> (f32, f32) {
    let e = (-x.abs()).exp();
    let sp = x.max(0.0) + e.ln_1p();
    let sig = if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    (sp, sig)
}

impl candle_core::CustomOp2 for BinaryHead {
    fn name(&self) -> &'static str {
        "llmrec-binary-head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, v) = head_dims(l1, l2)?;
        let m = self.m;
        if m == 0 || self.candidates.len() != n * m {
            candle_core::bail!("{} candidates for {n} rows of {m}", self.candidates.len());
        }
        if let Some(&c) = self.candidates.iter().find(|&&c| c as usize >= v) {
            candle_core::bail!("candidate {c} out of range for {v} items");
        }
        let h = contiguous_f32(s1, l1)?;
        let emb = contiguous_f32(s2, l2)?;
        let inv_n = 1.0 / n.max(1) as f32;
        let mut grad_h = vec![0f32; n * d];
        let parts = fold_in_order(
            grad_h.par_chunks_mut(HEAD_CHUNK * d).enumerate(),
            || (0f64, Vec::new()),
            |(mut loss, mut acc): (f64, Vec<f32>), (c, gh)| {
                if acc.is_empty() {
                    acc = vec![0f32; (v + 1) * d];
                }
                let r0 = c * HEAD_CHUNK;
                loss += binary_rows(self, (h, emb), r0, d, gh, &mut acc, inv_n);
                (loss, acc)
            },
        );
        let (loss, acc) = parts.into_iter().fold((0.0, Vec::new()), add_into);
        let grad_emb = if acc.is_empty() {
            vec![0f32; (v + 1) * d]
        } else {
            acc
        };
        keep_grads(&self.grads, grad_h, grad_emb, loss, n)
    }

    fn bwd(
        &self,
        h: &Tensor,
        emb: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        scaled_head_grads(&self.grads, h, emb, grad_res)
    }
}
