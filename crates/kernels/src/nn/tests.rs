//! Tests of the fused ops against candle compositions and finite differences.

use super::dropout::DROPOUT_BLOCK;
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
                let mut args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
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
