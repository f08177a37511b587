//! `llmrec bench sasrec`: SASRec training throughput for each loss, the time of a
//! full-ranking evaluation of every user, and peak memory.

use std::time::Instant;

use llmrec_core::{Error, EvalConfig, Result, Stage, evaluate};
use llmrec_models::{Loss, TrainEvent};
use serde::Serialize;

use crate::args::BenchSasrecArgs;
use crate::config::SasRecRunConfig;
use crate::config::load_toml;
use crate::output::{markdown_table, peak_rss_mib, publish_table, run_dir, write_json};
use crate::progress;

/// One loss's measurements.
#[derive(Debug, Serialize)]
struct LossBench {
    loss: String,
    epochs: usize,
    seconds_per_epoch: f64,
    sequences_per_second: f64,
    positions_per_second: f64,
    eval_users: usize,
    eval_seconds: f64,
    peak_rss_mib: Option<f64>,
}

fn parse_loss(s: &str) -> Result<Loss> {
    match s.trim() {
        "ce" => Ok(Loss::Ce),
        "bce" => Ok(Loss::Bce),
        "gbce" => Ok(Loss::Gbce {
            negatives: 256,
            t: 0.75,
        }),
        other => Err(Error::config(
            "--loss",
            format!("unknown loss `{other}`; expected ce, bce or gbce"),
        )),
    }
}

/// Runs `llmrec bench sasrec`.
pub fn sasrec(a: &BenchSasrecArgs) -> Result<()> {
    let losses: Vec<Loss> = a
        .loss
        .iter()
        .map(|l| parse_loss(l))
        .collect::<Result<_>>()?;
    if a.epochs == 0 {
        return Err(Error::config("--epochs", "must be at least 1"));
    }
    let base: SasRecRunConfig = load_toml(None, &a.set)?;
    let ds = crate::setup::dataset_named(&a.dataset)?;
    let split = llmrec_data::split::leave_one_out(&ds);
    let sequences = split.users.iter().filter(|u| u.train.len() >= 2).count();
    let dir = run_dir(&a.out, "bench-sasrec", &ds.name)?;
    let mut rows = Vec::new();
    for loss in losses {
        let cfg = llmrec_models::SasRecTrainConfig {
            loss,
            epochs: a.epochs,
            eval_every: a.epochs + 1,
            patience: usize::MAX,
            threads: a.threads,
            device: a.device.clone(),
            ..base.train.clone()
        };
        cfg.validate(ds.n_items())?;
        let pb = progress::bar(0, loss.label());
        let (mut secs, mut pos) = (Vec::new(), Vec::new());
        let mut show = progress::training(&pb);
        let mut on_event = |e: &TrainEvent| {
            show(e);
            if let TrainEvent::Epoch(r) = e {
                secs.push(r.seconds);
                pos.push(r.examples_per_sec);
            }
        };
        let report =
            llmrec_models::train(&ds, &split, &cfg, &dir.join(loss.label()), &mut on_event)?;
        pb.finish_and_clear();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let model = llmrec_models::load_checkpoint_on(&report.last_checkpoint, &ds, &a.device)?;
        let cases = split.cases(Stage::Test);
        let t = Instant::now();
        evaluate(&model, &cases, &EvalConfig::default(), None, &|_| {})?;
        let eval_seconds = t.elapsed().as_secs_f64();
        let s_per_epoch = mean(&secs);
        rows.push(LossBench {
            loss: loss.label().to_string(),
            epochs: secs.len(),
            seconds_per_epoch: s_per_epoch,
            sequences_per_second: sequences as f64 / s_per_epoch,
            positions_per_second: mean(&pos),
            eval_users: cases.len(),
            eval_seconds,
            peak_rss_mib: peak_rss_mib(),
        });
    }
    let header: Vec<String> = [
        "loss",
        "epochs",
        "s/epoch",
        "sequences/s",
        "positions/s",
        "full-ranking eval (s)",
        "users",
        "peak RSS so far (MiB)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.loss.clone(),
                r.epochs.to_string(),
                format!("{:.2}", r.seconds_per_epoch),
                format!("{:.0}", r.sequences_per_second),
                format!("{:.0}", r.positions_per_second),
                format!("{:.2}", r.eval_seconds),
                r.eval_users.to_string(),
                r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            ]
        })
        .collect();
    let heading = format!(
        "dataset: {} | {} training sequences | device: {} | threads: {} | CANDLE_NUM_THREADS: {}\n\n",
        ds.name,
        sequences,
        a.device,
        a.threads,
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let table = markdown_table(&header, &table_rows);
    write_json(
        &dir.join("bench.json"),
        &serde_json::json!({
            "dataset": ds.name,
            "fingerprint": ds.fingerprint(),
            "command": std::env::args().collect::<Vec<_>>(),
            "config": base.train,
            "results": rows,
        }),
    )?;
    publish_table(&dir, &heading, &table)
}
