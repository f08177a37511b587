//! `llmrec eval`: fit models on a leave-one-out split and evaluate them.

use std::path::Path;
use std::time::Instant;

use llmrec_core::metrics::Ties;
use llmrec_core::{
    Dataset, Error, EvalReport, Protocol, Result, Sampling, SequenceSplit, Stage, evaluate,
};
use serde::Serialize;

use crate::args::{EvalArgs, ProtocolArg, StageArg, TiesArg};
use crate::config::EvalRunConfig;
use crate::output::{markdown_table, peak_rss_mib, run_dir, write_atomic, write_json};
use crate::progress;

/// One model's result, as written to `metrics.json`.
#[derive(Debug, Serialize)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Seconds to fit.
    pub fit_seconds: f64,
    /// Seconds to score and rank every evaluated user.
    pub eval_seconds: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The evaluator's report.
    #[serde(flatten)]
    pub report: EvalReport,
}

/// Everything a result needs to be reproduced.
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    llmrec_version: &'static str,
    command: Vec<String>,
    dataset: &'a str,
    dataset_fingerprint: String,
    split: &'a str,
    stage: &'static str,
    protocol: String,
    seed: u64,
    config: &'a EvalRunConfig,
    results: &'a [ModelResult],
}

/// Typed settings from flags: file < `--set` < explicit flags.
pub fn settings(args: &EvalArgs) -> Result<(EvalRunConfig, Vec<String>, Stage)> {
    let mut cfg = EvalRunConfig::load(args.config.as_deref(), &args.set)?;
    if let Some(d) = &args.dataset {
        cfg.dataset.name = d.clone();
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if !args.ks.is_empty() {
        cfg.eval.ks = args.ks.clone();
    }
    let negatives = args.negatives.unwrap_or(100);
    match args.protocol {
        Some(ProtocolArg::Full) => cfg.eval.protocol = Protocol::Full,
        Some(ProtocolArg::SampledUniform) => {
            cfg.eval.protocol = Protocol::Sampled {
                negatives,
                sampling: Sampling::Uniform,
            }
        }
        Some(ProtocolArg::SampledPop) => {
            cfg.eval.protocol = Protocol::Sampled {
                negatives,
                sampling: Sampling::Popularity,
            }
        }
        None => {}
    }
    if args.keep_history {
        cfg.eval.exclude_history = false;
    }
    match args.ties {
        Some(TiesArg::Pessimistic) => cfg.eval.ties = Ties::Pessimistic,
        Some(TiesArg::Expected) => cfg.eval.ties = Ties::Expected,
        None => {}
    }
    if args.per_user {
        cfg.eval.per_user = true;
    }
    cfg.validate()?;
    let models = if args.model.is_empty() {
        cfg.run_models.clone()
    } else {
        args.model.clone()
    };
    for m in &models {
        if m == "sasrec" {
            if args.checkpoint.is_none() {
                return Err(Error::config(
                    "--model",
                    "`sasrec` needs --checkpoint DIR (a best/ or last/ folder written by `llmrec train sasrec`)",
                ));
            }
        } else if !llmrec_baselines::NAMES.contains(&m.as_str()) {
            return Err(Error::config(
                "--model",
                format!(
                    "unknown model `{m}`; known: {}, sasrec",
                    llmrec_baselines::NAMES.join(", ")
                ),
            ));
        }
    }
    let stage = match args.stage {
        StageArg::Valid => Stage::Valid,
        StageArg::Test => Stage::Test,
    };
    Ok((cfg, models, stage))
}

/// Fits (or, for `sasrec`, loads) and evaluates one model.
pub fn fit_and_eval(
    name: &str,
    cfg: &EvalRunConfig,
    ds: &Dataset,
    split: &SequenceSplit,
    stage: Stage,
    checkpoint: Option<&Path>,
) -> Result<ModelResult> {
    // Models learn from the training part only: validation and test items
    // never reach training (at test time the validation item is history input).
    let sp = progress::spinner(&format!("fitting {name}"));
    let t = Instant::now();
    let model =
        llmrec_pipelines::registry::build(name, &cfg.models, ds, split, cfg.seed, checkpoint)?;
    let fit_seconds = t.elapsed().as_secs_f64();
    sp.finish_and_clear();

    let cases = split.cases(stage);
    let pb = progress::bar(cases.len() as u64, name);
    let popularity = split.train_popularity();
    let t = Instant::now();
    let report = evaluate(model.as_ref(), &cases, &cfg.eval, Some(&popularity), &|n| {
        pb.inc(n as u64)
    })?;
    let eval_seconds = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(ModelResult {
        model: name.to_owned(),
        fit_seconds,
        eval_seconds,
        peak_rss_mib: peak_rss_mib(),
        report,
    })
}

/// Runs `llmrec eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let (cfg, models, stage) = settings(args)?;
    let ds = crate::setup::load_dataset(&cfg.dataset)?;
    let stats = ds.stats();
    let split = llmrec_data::split::leave_one_out(&ds);
    let dir = run_dir(&args.out, "eval", &ds.name)?;
    write_atomic(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    write_json(&dir.join("dataset_stats.json"), &stats)?;

    let mut results = Vec::new();
    for name in &models {
        let mut r = fit_and_eval(name, &cfg, &ds, &split, stage, args.checkpoint.as_deref())?;
        if let Some(per_user) = r.report.per_user.take() {
            let mut text = String::new();
            for u in &per_user {
                text.push_str(
                    &serde_json::to_string(u).map_err(|e| Error::Invalid(e.to_string()))?,
                );
                text.push('\n');
            }
            write_atomic(&dir.join(format!("per_user_{name}.jsonl")), text.as_bytes())?;
        }
        eprintln!(
            "{name}: fit {:.2}s, eval {:.2}s",
            r.fit_seconds, r.eval_seconds
        );
        results.push(r);
    }
    let stage_name = match stage {
        Stage::Valid => "valid",
        Stage::Test => "test",
    };
    let protocol = cfg
        .eval
        .protocol
        .label(ds.n_items(), cfg.eval.exclude_history, cfg.eval.ties);
    let record = RunRecord {
        llmrec_version: env!("CARGO_PKG_VERSION"),
        command: std::env::args().collect(),
        dataset: &ds.name,
        dataset_fingerprint: ds.fingerprint(),
        split: &split.name,
        stage: stage_name,
        protocol: protocol.clone(),
        seed: cfg.seed,
        config: &cfg,
        results: &results,
    };
    write_json(&dir.join("metrics.json"), &record)?;
    let table = results_table(&results, &cfg.eval.ks);
    let heading = format!(
        "dataset: {} ({} users, {} items, {} interactions) | split: {} | stage: {stage_name} | protocol: {protocol} | seed: {}\n\n",
        ds.name, stats.users, stats.items, stats.interactions, split.name, cfg.seed
    );
    write_atomic(
        &dir.join("table.md"),
        format!("{heading}{table}").as_bytes(),
    )?;
    print!("{heading}{table}");
    println!("\nrun folder: {}", display(&dir));
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The Markdown table of results: HR, NDCG and MRR at every cutoff.
pub fn results_table(results: &[ModelResult], ks: &[usize]) -> String {
    let mut header = vec!["model".to_string()];
    for k in ks {
        for m in ["HR", "NDCG", "MRR"] {
            header.push(format!("{m}@{k}"));
        }
    }
    header.push(format!("Coverage@{}", ks.iter().max().unwrap_or(&10)));
    header.push("fit s".into());
    header.push("eval s".into());
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![r.model.clone()];
            for k in ks {
                for m in ["HR", "NDCG", "MRR"] {
                    row.push(
                        r.report
                            .get(&format!("{m}@{k}"))
                            .map_or("-".into(), |v| format!("{v:.4}")),
                    );
                }
            }
            let maxk = ks.iter().max().unwrap_or(&10);
            row.push(
                r.report
                    .get(&format!("Coverage@{maxk}"))
                    .map_or("-".into(), |v| format!("{v:.4}")),
            );
            row.push(format!("{:.2}", r.fit_seconds));
            row.push(format!("{:.2}", r.eval_seconds));
            row
        })
        .collect();
    markdown_table(&header, &rows)
}
