//! `llmrec train sasrec`: train SASRec with early stopping, then evaluate the
//! best checkpoint on the test split.

use std::time::Instant;

use llmrec_core::{Error, EvalConfig, Protocol, Result, Sampling, Stage, evaluate};
use llmrec_models::Loss;

use crate::args::{LossArg, TrainArgs};
use crate::config::{SasRecRunConfig, load_toml};
use crate::output::{
    markdown_table, peak_rss_mib, publish_table, run_dir, write_atomic, write_json,
};
use crate::progress;

/// Typed settings: file < `--set` < explicit flags.
pub fn settings(args: &TrainArgs) -> Result<SasRecRunConfig> {
    let mut cfg: SasRecRunConfig = load_toml(args.config.as_deref(), &args.run.set)?;
    if let Some(d) = &args.dataset {
        cfg.dataset.name = d.clone();
    }
    if let Some(l) = args.loss {
        cfg.train.loss = match l {
            LossArg::Bce => Loss::Bce,
            LossArg::Ce => Loss::Ce,
            LossArg::Gbce => match cfg.train.loss {
                g @ Loss::Gbce { .. } => g,
                _ => Loss::Gbce {
                    negatives: 256,
                    t: 0.75,
                },
            },
        };
    }
    if let Some(d) = &args.run.device {
        cfg.train.device = d.clone();
    }
    if let Some(e) = args.run.epochs {
        cfg.train.epochs = e;
    }
    if let Some(s) = args.seed {
        cfg.train.seed = s;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    if let Some(r) = &args.resume {
        cfg.train.resume_from = Some(r.clone());
    }
    if cfg.test_ks.is_empty() || cfg.test_ks.contains(&0) {
        return Err(Error::config("test_ks", "cutoffs must be positive"));
    }
    Ok(cfg)
}

/// Runs `llmrec train sasrec`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = settings(args)?;
    let ds = crate::setup::load_dataset(&cfg.dataset)?;
    cfg.train.validate(ds.n_items())?;
    let split = llmrec_data::split::leave_one_out(&ds);
    // A resumed run goes on in its own folder (the one holding `last/`), so that its
    // records, `best/` and early-stopping count carry over.
    let dir = match &cfg.train.resume_from {
        Some(last) => resumed_run_dir(last)?,
        None => run_dir(&args.run.out, "train-sasrec", &ds.name)?,
    };
    let text = toml::to_string_pretty(&cfg).map_err(|e| Error::config("(all)", e.to_string()))?;
    write_atomic(&dir.join("config.toml"), text.as_bytes())?;
    write_json(&dir.join("dataset_stats.json"), &ds.stats())?;

    let pb = progress::bar(0, "sasrec");
    let t = Instant::now();
    let report = llmrec_models::train(&ds, &split, &cfg.train, &dir, &mut progress::training(&pb))?;
    pb.finish_and_clear();
    let train_seconds = t.elapsed().as_secs_f64();

    // Final test evaluation of the best checkpoint: full ranking, plus the
    // sampled-100 protocol labelled for comparison with the SASRec paper.
    let model = llmrec_models::load_checkpoint(&report.best_checkpoint, &ds)?;
    let cases = split.cases(Stage::Test);
    let full_cfg = EvalConfig {
        ks: cfg.test_ks.clone(),
        ..Default::default()
    };
    let t = Instant::now();
    let full = evaluate(&model, &cases, &full_cfg, None, &|_| {})?;
    let eval_seconds = t.elapsed().as_secs_f64();
    let sampled_cfg = EvalConfig {
        ks: vec![10],
        protocol: Protocol::Sampled {
            negatives: 100,
            sampling: Sampling::Uniform,
        },
        ..Default::default()
    };
    let sampled = evaluate(&model, &cases, &sampled_cfg, None, &|_| {})?;

    let record = serde_json::json!({
        "llmrec_version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "model": "sasrec",
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint(),
        "split": split.name,
        "stage": "test",
        "seed": cfg.train.seed,
        "config": cfg,
        "train": report,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "test": full,
        "test_sampled": sampled,
    });
    write_json(&dir.join("test_metrics.json"), &record)?;

    let mut header = vec!["model".to_string(), "loss".into(), "best epoch".into()];
    let mut row = vec![
        "sasrec".to_string(),
        cfg.train.loss.label().to_string(),
        report.best_epoch.to_string(),
    ];
    for k in &cfg.test_ks {
        for m in ["HR", "NDCG", "MRR"] {
            header.push(format!("{m}@{k}"));
            row.push(
                full.get(&format!("{m}@{k}"))
                    .map_or("-".into(), |v| format!("{v:.4}")),
            );
        }
    }
    header.push("sampled-100 HR@10".into());
    row.push(
        sampled
            .get("HR@10")
            .map_or("-".into(), |v| format!("{v:.4}")),
    );
    header.push("s/epoch".into());
    row.push(format!("{:.1}", report.mean_epoch_seconds));
    let table = markdown_table(&header, &[row]);
    let heading = format!(
        "dataset: {} | split: {} | stage: test | protocol: {} (sampled-100 column: {}) | seed: {}\n\n",
        ds.name, split.name, full.protocol, sampled.protocol, cfg.train.seed
    );
    publish_table(&dir, &heading, &table)
}

/// The run folder of a resumed run: `RUN` of `RUN/last`.
fn resumed_run_dir(last: &std::path::Path) -> Result<std::path::PathBuf> {
    let dir = last
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.join("train_config.json").is_file() {
        return Err(Error::config(
            "--resume",
            format!(
                "expected the `last/` folder of a `train sasrec` run (its parent holds train_config.json), got `{}`",
                last.display()
            ),
        ));
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("sasrec.toml");
        let cfg: SasRecRunConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, SasRecRunConfig::default());
    }

    #[test]
    fn beauty_config_differs_only_in_shape_and_dataset() {
        let p = crate::config::shipped_config("sasrec-beauty.toml");
        let cfg: SasRecRunConfig = load_toml(Some(&p), &[]).unwrap();
        let mut want = SasRecRunConfig::default();
        want.dataset.name = "amazon-beauty".into();
        want.train.model.max_len = 50;
        want.train.model.dropout = 0.5;
        assert_eq!(cfg, want);
    }

    #[test]
    fn gbce_override_and_unknown_key() {
        let cfg: SasRecRunConfig = load_toml(
            None,
            &[
                "train.loss.kind=gbce".into(),
                "train.loss.negatives=64".into(),
                "train.loss.t=0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            cfg.train.loss,
            Loss::Gbce {
                negatives: 64,
                t: 0.5
            }
        );
        assert!(load_toml::<SasRecRunConfig>(None, &["train.model.hiden=64".into()]).is_err());
    }
}
