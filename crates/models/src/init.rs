//! Seeded parameter initialisation (candle's initialisers use their own, unseeded
//! generator; a run here must be reproducible from its seed).

use candle_core::Tensor;
use candle_nn::VarMap;
use llmrec_core::{Error, Result, Rng};

/// Overwrites every variable in `varmap`, in name order, from `Rng::new(seed)`:
/// names ending in `bias` get zeros, other 1-D variables (norm gains) ones, and a
/// matrix `(rows, cols)` uniform values with standard deviation `1/sqrt(cols)` (fan-in
/// for a `(out, in)` weight; `1/sqrt(d)` for an embedding table).
pub fn seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let err = |e: candle_core::Error| Error::model("init", e);
    let mut rng = Rng::new(seed);
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::model("init", "variable map lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let v = &data[name];
        let shape = v.as_tensor().shape().clone();
        let dims = shape.dims();
        let n = shape.elem_count();
        let vals: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; n]
        } else if dims.len() < 2 {
            vec![1.0; n]
        } else {
            let cols = dims[dims.len() - 1].max(1);
            let bound = (3.0 / cols as f64).sqrt();
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        let t = Tensor::from_vec(vals, shape, v.as_tensor().device()).map_err(err)?;
        v.set(&t).map_err(err)?;
    }
    Ok(())
}
