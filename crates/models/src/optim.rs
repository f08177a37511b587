//! AdamW whose state (both moments and the step count) can be saved and loaded, so that
//! a resumed training run continues exactly where it stopped. candle-nn's `AdamW` keeps
//! its moments private. The update here is the same as candle-nn's, operation for
//! operation, so switching optimizers does not change results.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};
use llmrec_core::{Error, Result};

/// Cosine decay from `lr` at step 0 to 0 at step `total` (and 0 after it): the
/// schedule of the content MLP and the CTR models.
pub fn cosine_decay(lr: f64, step: usize, total: usize) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// AdamW with decoupled weight decay over the variables of a [`VarMap`].
pub struct AdamW {
    /// (name, parameter, first moment, second moment), sorted by name.
    vars: Vec<(String, Var, Var, Var)>,
    step: usize,
    params: ParamsAdamW,
}

fn model_err(e: candle_core::Error) -> Error {
    Error::model("adamw", e)
}

impl AdamW {
    /// An optimizer for every float variable of `vars`, with zero moments.
    pub fn new(vars: &VarMap, params: ParamsAdamW) -> Result<Self> {
        let map = vars
            .data()
            .lock()
            .map_err(|_| Error::model("adamw", "variable map lock poisoned"))?;
        let mut list = Vec::with_capacity(map.len());
        for (name, var) in map.iter().filter(|(_, v)| v.dtype().is_float()) {
            let zeros = || Var::zeros(var.shape(), var.dtype(), var.device()).map_err(model_err);
            list.push((name.clone(), var.clone(), zeros()?, zeros()?));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(AdamW {
            vars: list,
            step: 0,
            params,
        })
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Sets the learning rate of the following steps.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Steps taken so far (the bias correction uses it).
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward().map_err(model_err)?;
        self.step(&grads)
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        let (lr, b1, b2) = (p.lr, p.beta1, p.beta2);
        let scale_m = 1.0 / (1.0 - b1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - b2.powi(self.step as i32));
        let decay = 1.0 - lr * p.weight_decay;
        for (_, theta, m, v) in &self.vars {
            let Some(g) = grads.get(theta) else {
                continue;
            };
            let update = || -> candle_core::Result<()> {
                let next_m = ((m.as_tensor() * b1)? + (g * (1.0 - b1))?)?;
                let next_v = ((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&next_m * scale_m)?;
                let v_hat = (&next_v * scale_v)?;
                let next_theta = (theta.as_tensor() * decay)?;
                let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
                let next_theta = (next_theta - (adjusted * lr)?)?;
                m.set(&next_m)?;
                v.set(&next_v)?;
                theta.set(&next_theta)
            };
            update().map_err(model_err)?;
        }
        Ok(())
    }

    /// Writes both moments to a safetensors file (`m.<name>` and `v.<name>`). The step
    /// count is the caller's to keep (see [`AdamW::load`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for (name, _, m, v) in &self.vars {
            tensors.insert(format!("m.{name}"), m.as_tensor().clone());
            tensors.insert(format!("v.{name}"), v.as_tensor().clone());
        }
        candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Artifact {
            path: path.to_path_buf(),
            message: format!("cannot write optimizer state: {e}"),
        })
    }

    /// Restores the moments written by [`AdamW::save`] and the step count `steps`.
    /// Refuses a file that lacks a variable's moments or has them in another shape.
    pub fn load(&mut self, path: &Path, steps: usize) -> Result<()> {
        let artifact = |message: String| Error::Artifact {
            path: path.to_path_buf(),
            message,
        };
        let device = match self.vars.first() {
            Some((_, v, _, _)) => v.device().clone(),
            None => candle_core::Device::Cpu,
        };
        let mut data = candle_core::safetensors::load(path, &device)
            .map_err(|e| artifact(format!("cannot read optimizer state: {e}")))?;
        for (name, theta, m, v) in &self.vars {
            for (kind, var) in [("m", m), ("v", v)] {
                let key = format!("{kind}.{name}");
                let t = data
                    .remove(&key)
                    .ok_or_else(|| artifact(format!("no `{key}` in the optimizer state")))?;
                if t.shape() != theta.shape() {
                    return Err(artifact(format!(
                        "`{key}` has shape {:?}, the variable {:?}",
                        t.shape(),
                        theta.shape()
                    )));
                }
                var.set(&t).map_err(model_err)?;
            }
        }
        self.step = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, Optimizer};

    #[test]
    fn cosine_decay_ends() {
        assert_eq!(cosine_decay(0.01, 0, 100), 0.01);
        assert!((cosine_decay(0.01, 50, 100) - 0.005).abs() < 1e-15);
        assert!(cosine_decay(0.01, 100, 100).abs() < 1e-15);
        assert_eq!(cosine_decay(0.01, 150, 100), cosine_decay(0.01, 100, 100));
    }

    fn quadratic(vars: &VarMap) -> Tensor {
        let w = vars
            .get((3, 2), "w", Init::Const(0.5), DType::F32, &Device::Cpu)
            .unwrap();
        let x = Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        (w.matmul(&x).unwrap() - 1.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    }

    /// The same updates as candle-nn's AdamW, bit for bit; the state survives a save and
    /// a load into a fresh optimizer; a file without a variable's moments is refused.
    #[test]
    fn matches_candle_and_round_trips_its_state() {
        let params = ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        let (ours_vars, theirs_vars) = (VarMap::new(), VarMap::new());
        quadratic(&ours_vars);
        quadratic(&theirs_vars);
        let mut ours = AdamW::new(&ours_vars, params.clone()).unwrap();
        let mut theirs = candle_nn::AdamW::new(theirs_vars.all_vars(), params.clone()).unwrap();
        for _ in 0..5 {
            ours.backward_step(&quadratic(&ours_vars)).unwrap();
            theirs.backward_step(&quadratic(&theirs_vars)).unwrap();
        }
        let get = |m: &VarMap| {
            m.data().lock().unwrap()["w"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get(&ours_vars), get(&theirs_vars));
        // Save, continue two steps; a fresh optimizer loaded from the file continues the
        // same way from the same weights.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        ours.save(&path).unwrap();
        let snapshot = get(&ours_vars);
        for _ in 0..2 {
            ours.backward_step(&quadratic(&ours_vars)).unwrap();
        }
        let want = get(&ours_vars);
        let again = VarMap::new();
        quadratic(&again);
        again.data().lock().unwrap()["w"]
            .set(&Tensor::from_vec(snapshot, (3, 2), &Device::Cpu).unwrap())
            .unwrap();
        let mut fresh = AdamW::new(&again, params.clone()).unwrap();
        fresh.load(&path, 5).unwrap();
        for _ in 0..2 {
            fresh.backward_step(&quadratic(&again)).unwrap();
        }
        assert_eq!(get(&again), want);
        // Another variable name: refused, naming the missing tensor.
        let other = VarMap::new();
        other
            .get(2, "b", Init::Const(0.0), DType::F32, &Device::Cpu)
            .unwrap();
        let mut wrong = AdamW::new(&other, params).unwrap();
        let e = wrong.load(&path, 5).unwrap_err().to_string();
        assert!(e.contains("no `m.b`"), "{e}");
    }
}
