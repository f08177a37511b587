//! Training losses for SASRec: sampled BCE (original), full softmax cross-entropy
//! ("SASRec+"), and gBCE (gSASRec, Petrov & Macdonald 2023).

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

pub use llmrec_kernels::heads::{binary_head, softmax_head};

/// Which loss to train with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Loss {
    /// Binary cross-entropy with one negative per position, drawn uniformly from the
    /// items the user has not interacted with (the original SASRec).
    Bce,
    /// Softmax cross-entropy over all items at every position ("SASRec+"). The default.
    #[default]
    Ce,
    /// Generalised BCE: `-log(sigmoid(s+)^beta) - sum_j log(1 - sigmoid(s-_j))` with
    /// `negatives` uniform negatives per position (drawn from all items, as in the
    /// gSASRec code), `alpha = negatives / (n_items - 1)` and
    /// `beta = alpha * (t * (1 - 1/alpha) + 1/alpha)`.
    Gbce {
        /// Negatives per position (gSASRec uses 256).
        negatives: usize,
        /// Calibration `t` in `[0, 1]`; 0 gives plain BCE, 1 full calibration (paper: 0.75).
        t: f64,
    },
}

impl Loss {
    /// Short label (`bce`, `ce`, `gbce`).
    pub fn label(&self) -> &'static str {
        match self {
            Loss::Bce => "bce",
            Loss::Ce => "ce",
            Loss::Gbce { .. } => "gbce",
        }
    }

    /// Negatives drawn per position (0 for cross-entropy).
    pub fn negatives(&self) -> usize {
        match self {
            Loss::Bce => 1,
            Loss::Ce => 0,
            Loss::Gbce { negatives, .. } => *negatives,
        }
    }

    /// Checks the values against the number of items.
    pub fn validate(&self, n_items: usize) -> llmrec_core::Result<()> {
        use llmrec_core::Error;
        if let Loss::Gbce { negatives, t } = *self {
            if negatives == 0 || negatives >= n_items {
                return Err(Error::config(
                    "loss.negatives",
                    format!("must be in 1..{n_items} (the number of items)"),
                ));
            }
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::config("loss.t", "must be in [0, 1]"));
            }
        }
        if n_items < 2 {
            return Err(Error::Invalid("SASRec needs at least two items".into()));
        }
        Ok(())
    }
}

/// gSASRec's `beta` for `k` negatives among `n_items` items and calibration `t`.
pub fn gbce_beta(k: usize, n_items: usize, t: f64) -> f64 {
    let alpha = k as f64 / (n_items as f64 - 1.0);
    alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
}

/// `log(1 + exp(x))`, numerically stable and differentiable.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + tail
}

/// Mean binary loss over positions: `beta * softplus(-s[:, 0]) + sum_j softplus(s[:, j])`,
/// where column 0 of `scores` (N, 1 + k) holds the positive logit.
pub fn binary_loss(scores: &Tensor, beta: f64) -> candle_core::Result<Tensor> {
    let m = scores.dim(1)?;
    let pos = scores.narrow(1, 0, 1)?;
    let neg = scores.narrow(1, 1, m - 1)?;
    let lp = (softplus(&pos.neg()?)?.sum_all()? * beta)?;
    let ln = softplus(&neg)?.sum_all()?;
    (lp + ln)? / scores.dim(0)? as f64
}

/// Mean softmax cross-entropy of `logits` (N, V) against `targets` (N) on the CPU, with
/// a fused forward and backward (one pass over the logits each).
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    cross_entropy_smoothed(logits, targets, 0.0)
}

/// [`cross_entropy`] with label smoothing `eps` in `[0, 1)`: the target distribution is
/// `1 - eps` on the target plus `eps / V` on every class, so a row's loss is
/// `logsumexp(x) - (1 - eps)·x[target] - eps·mean(x)`. `eps = 0` is plain cross-entropy,
/// computed exactly as [`cross_entropy`] always has been.
pub fn cross_entropy_smoothed(
    logits: &Tensor,
    targets: &[u32],
    eps: f64,
) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        check_smoothing(eps)?;
        let logits = logits.contiguous()?;
        let per_row = llmrec_kernels::heads::cross_entropy_rows(&logits, targets, eps as f32)?;
        per_row.mean_all()
    } else {
        cross_entropy_unfused(logits, targets, eps)
    }
}

/// The same loss from candle's ops, on any device: candle's cross-entropy at `eps = 0`,
/// [`cross_entropy_reference_smoothed`] otherwise.
pub fn cross_entropy_unfused(
    logits: &Tensor,
    targets: &[u32],
    eps: f64,
) -> candle_core::Result<Tensor> {
    check_smoothing(eps)?;
    if eps == 0.0 {
        let t = Tensor::from_slice(targets, targets.len(), logits.device())?;
        candle_nn::loss::cross_entropy(logits, &t)
    } else {
        cross_entropy_reference_smoothed(logits, targets, eps)
    }
}

fn check_smoothing(eps: f64) -> candle_core::Result<()> {
    if !(0.0..1.0).contains(&eps) {
        candle_core::bail!("label smoothing must be in [0, 1), got {eps}");
    }
    Ok(())
}

/// Reference cross-entropy from primitive ops (used off the CPU and in tests).
pub fn cross_entropy_reference(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let t = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let ls = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    ls.gather(&t.unsqueeze(1)?, 1)?.neg()?.mean_all()
}

/// Reference label-smoothed cross-entropy from primitive ops (off the CPU and in tests):
/// `-(1-eps)·log p[target] - eps·mean(log p)`, averaged over rows.
pub fn cross_entropy_reference_smoothed(
    logits: &Tensor,
    targets: &[u32],
    eps: f64,
) -> candle_core::Result<Tensor> {
    let t = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let ls = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = ls.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = ls.mean(D::Minus1)?.neg()?;
    ((nll * (1.0 - eps))? + (smooth * eps)?)?.mean_all()
}
