//! One registry resolves every model by name: the baselines, fitted on the training
//! part of a split, and the trained models (SASRec, TIGER) from their checkpoints.

use std::path::Path;

use llmrec_baselines::BaselinesConfig;
use llmrec_core::{Dataset, Error, Recommender, Result, SequenceSplit};

/// Models trained elsewhere and loaded from a checkpoint folder.
pub const CHECKPOINT_MODELS: [&str; 2] = ["sasrec", "tiger"];

/// Every model name the registry knows.
pub fn names() -> Vec<&'static str> {
    llmrec_baselines::NAMES
        .iter()
        .copied()
        .chain(CHECKPOINT_MODELS)
        .collect()
}

/// The model called `name`: a baseline fitted on `split`'s training part only
/// (validation and test items never reach it), or a trained model loaded from
/// `checkpoint` (refused on another dataset). `seed` makes stochastic fits
/// reproducible.
pub fn build(
    name: &str,
    baselines: &BaselinesConfig,
    dataset: &Dataset,
    split: &SequenceSplit,
    seed: u64,
    checkpoint: Option<&Path>,
) -> Result<Box<dyn Recommender>> {
    if CHECKPOINT_MODELS.contains(&name) {
        let dir = checkpoint.ok_or_else(|| {
            Error::config(
                "--checkpoint",
                format!("`{name}` is loaded from a trained checkpoint: give --checkpoint RUN/best"),
            )
        })?;
        return Ok(match name {
            "sasrec" => Box::new(llmrec_models::load_checkpoint(dir, dataset)?),
            _ => Box::new(llmrec_models::tiger::load_checkpoint(dir, dataset, "cpu")?),
        });
    }
    if !llmrec_baselines::NAMES.contains(&name) {
        return Err(Error::config(
            "models",
            format!(
                "unknown model `{name}`; known models: {}",
                names().join(", ")
            ),
        ));
    }
    let train: Vec<Vec<u32>> = split.users.iter().map(|u| u.train.clone()).collect();
    llmrec_baselines::build(name, baselines, &train, split.n_items, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_baselines_and_refuses_what_it_cannot_build() {
        let ds = llmrec_data::synthetic::next_item_rule(30, 12, 6, 1);
        let split = llmrec_data::split::leave_one_out(&ds);
        let cfg = BaselinesConfig::default();
        let m = build("mostpop", &cfg, &ds, &split, 1, None).unwrap();
        assert_eq!(m.n_items(), 12);
        let err = |name: &str| {
            build(name, &cfg, &ds, &split, 1, None)
                .err()
                .map(|e| e.to_string())
        };
        let e = err("sasrec").unwrap();
        assert!(e.contains("--checkpoint"), "{e}");
        let e = err("sasrek").unwrap();
        assert!(
            e.contains("unknown model `sasrek`") && e.contains("tiger"),
            "{e}"
        );
        let missing = std::path::Path::new("/nonexistent/best");
        assert!(build("tiger", &cfg, &ds, &split, 1, Some(missing)).is_err());
    }
}
