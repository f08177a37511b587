//! Layers that SASRec and TIGER share: LayerNorm, dense, dropout and softmax. On the CPU
//! the first three can run as fused ops with hand-written backward passes ([`llmrec_kernels::nn`]);
//! elsewhere (and for reference) they are candle's primitive, differentiable ops.

use candle_core::{D, DType, Tensor};
use llmrec_core::Rng;

use llmrec_kernels::nn::{DenseOp, DropoutOp, LayerNormOp};

/// LayerNorm over the last dimension, `(x - mean) / sqrt(var + eps) * w + b`, with
/// `(w, b)` the weight and bias. `fused` (CPU only) runs it as one op.
pub(crate) fn layer_norm(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    eps: f64,
    fused: bool,
) -> candle_core::Result<Tensor> {
    if fused {
        let op = LayerNormOp { eps: eps as f32 };
        return x.contiguous()?.apply_op3(weight, bias, op);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// A dense layer `y = x W^T (+ b)` on the last dimension of `x` (any rank), with `W`
/// `(d_out, d_in)`. `fused` (CPU only) runs it as one op (a layer without bias gets a
/// zero bias there).
pub(crate) fn dense(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    fused: bool,
) -> candle_core::Result<Tensor> {
    if fused {
        let x = x.contiguous()?;
        return match bias {
            Some(b) => x.apply_op3(weight, b, DenseOp),
            None => {
                let zero = Tensor::zeros(weight.dim(0)?, DType::F32, weight.device())?;
                x.apply_op3(weight, &zero, DenseOp)
            }
        };
    }
    let mut dims = x.dims().to_vec();
    let d_in = dims[dims.len() - 1];
    let rows = x.elem_count() / d_in.max(1);
    let mut y = x.reshape((rows, d_in))?.matmul(&weight.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let last = dims.len() - 1;
    dims[last] = weight.dim(0)?;
    y.reshape(dims)
}

/// Multiplies `x` by an inverted-dropout mask (no-op when `rng` is `None` or
/// `p == 0`). On the CPU the mask comes from `rng`; on an accelerator it is drawn
/// there from the device's seed.
pub(crate) fn dropout(x: &Tensor, p: f32, rng: Option<&mut Rng>) -> candle_core::Result<Tensor> {
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let scale = 1.0 / (1.0 - p);
    if !x.device().is_cpu() {
        // Draw the mask on the device (seeded by `Device::set_seed`): a host-made mask
        // is drawn on one thread and copied over on every call, which was most of a
        // GPU training step.
        let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?
            .ge(f64::from(p))?
            .to_dtype(x.dtype())?;
        return (x * keep)? * f64::from(scale);
    }
    let n = x.elem_count();
    // 16 random bits per element: four elements per draw.
    let threshold = (p * 65536.0).round().min(65535.0) as u32;
    let mut mask = vec![0f32; n];
    for chunk in mask.chunks_mut(4) {
        let mut r = rng.next_u64();
        for m in chunk {
            if (r & 0xFFFF) as u32 >= threshold {
                *m = scale;
            }
            r >>= 16;
        }
    }
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    x * mask
}

/// [`dropout`] (after a ReLU with `relu`) as one fused CPU op whose masks are drawn in
/// parallel from a seed taken from `rng`. Without `rng` (evaluation) or with `p == 0`
/// it is the identity (or a plain ReLU).
pub(crate) fn fused_dropout(
    x: &Tensor,
    p: f32,
    relu: bool,
    rng: Option<&mut Rng>,
) -> candle_core::Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => {
            let op = DropoutOp {
                p,
                seed: rng.next_u64(),
                relu,
            };
            x.contiguous()?.apply_op1(op)
        }
        _ if relu => x.relu(),
        _ => Ok(x.clone()),
    }
}

/// Softmax over the last dimension (max-subtracted, differentiable).
pub(crate) fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
