//! `llmrec rating baselines`: the rating-prediction protocol on MovieLens 1M with the
//! collaborative baselines (global mean, biases, biased MF), settings chosen on
//! validation, test read once.

use std::path::PathBuf;

use llmrec_core::{Error, Result};
use llmrec_data::loaders::load_ml1m_explicit;
use llmrec_data::registry::Locations;
use llmrec_pipelines::rating::{RatingConfig, run_baselines};

use crate::args::{RatingBaselinesArgs, RatingCommand};
use crate::config::load_toml;
use crate::output::{markdown_table, publish_table, run_dir, write_json};

/// Runs `llmrec rating ...`.
pub fn run(cmd: &RatingCommand) -> Result<()> {
    match cmd {
        RatingCommand::Baselines(a) => baselines(a),
    }
}

/// The MovieLens 1M folder: `--ml1m-dir`, else `$LLMREC_DATA_DIR/ml-1m`.
fn ml1m_dir(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.clone());
    }
    Locations::from_env()
        .data_dir
        .map(|d| d.join("ml-1m"))
        .ok_or_else(|| {
            Error::config(
                "--ml1m-dir",
                "set LLMREC_DATA_DIR to the folder holding ml-1m/ (derived/ratings_ordered.tsv, \
                 users.dat, movies.dat), or pass --ml1m-dir",
            )
        })
}

fn baselines(a: &RatingBaselinesArgs) -> Result<()> {
    let cfg: RatingConfig = load_toml(a.config.as_deref(), &a.set)?;
    cfg.validate()?;
    let dir = ml1m_dir(a.ml1m_dir.as_ref())?;
    let data = load_ml1m_explicit(&dir)?;
    let report = run_baselines(&data, &cfg, &mut |line| eprintln!("{line}"))?;
    let out = run_dir(&a.out, "rating-baselines", "ml-1m")?;
    write_json(&out.join("metrics.json"), &report)?;
    let header: Vec<String> = [
        "method",
        "chosen on validation",
        "valid RMSE",
        "test RMSE",
        "test MAE",
        "test AUC",
        "s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = report
        .methods
        .iter()
        .map(|m| {
            vec![
                m.method.clone(),
                m.chosen.clone(),
                format!("{:.4}", m.valid.rmse),
                format!("{:.4}", m.test.rmse),
                format!("{:.4}", m.test.mae),
                format!("{:.4}", m.test.auc),
                format!("{:.1}", m.seconds),
            ]
        })
        .collect();
    let table = markdown_table(&header, &rows);
    let heading = format!(
        "ml-1m rating prediction, {} ({} train / {} valid / {} test rows), seed {}\n\n",
        report.protocol, report.rows[0], report.rows[1], report.rows[2], cfg.seed
    );
    publish_table(&out, &heading, &table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("rating.toml");
        let cfg: RatingConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, RatingConfig::default());
        assert!(load_toml::<RatingConfig>(Some(&p), &["mf.factrs=[2]".into()]).is_err());
    }
}
