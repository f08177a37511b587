//! Training throughput of SASRec on ML-1M (SASRec's preprocessing), per loss.
//!
//! ```text
//! cargo run --release -p llmrec-models --example bench_sasrec -- \
//!     [--data /work/shared/data/ml-1m-sas/sequences.txt] [--loss ce,bce,gbce] \
//!     [--epochs 1] [--threads 2] [--device cpu] [--users N]
//! ```
//!
//! Paper settings: batch 128, max_len 200, hidden 50, 2 blocks, one sequence per user
//! with a loss at every position. Each run ends with one full-ranking validation pass
//! over all users, whose time is printed too.

use std::collections::HashMap;
use std::path::PathBuf;

use llmrec_core::{Dataset, UserSplit};
use llmrec_data::split::leave_one_out;
use llmrec_models::{Loss, TrainConfig, TrainEvent, train};

fn load(path: &str) -> Result<Dataset, Box<dyn std::error::Error>> {
    Ok(llmrec_data::loaders::load_sasrec_from_files(
        std::path::Path::new(path),
        None,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        if let [k, v] = pair {
            args.insert(k.trim_start_matches("--").to_string(), v.clone());
        } else {
            return Err(format!("expected `--key value` pairs, got {argv:?}").into());
        }
    }
    let get = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
    let data = get("data", "/work/shared/data/ml-1m-sas/sequences.txt");
    let epochs: usize = get("epochs", "1").parse()?;
    let threads: usize = get("threads", "2").parse()?;
    let device = get("device", "cpu");
    let ds = load(&data)?;
    let mut split = leave_one_out(&ds);
    // `--users N`: train and validate on the first N users only (for profiling).
    let users: usize = get("users", "0").parse()?;
    if users > 0 {
        for u in split.users.iter_mut().skip(users) {
            *u = UserSplit::default();
        }
    }
    println!(
        "{}: {} users, {} items, {} interactions; threads {threads}, device {device}",
        data,
        ds.n_users(),
        ds.n_items(),
        ds.interactions.len()
    );
    for name in get("loss", "ce,bce,gbce").split(',') {
        let loss = match name {
            "ce" => Loss::Ce,
            "bce" => Loss::Bce,
            "gbce" => Loss::Gbce {
                negatives: 256,
                t: 0.75,
            },
            other => return Err(format!("unknown loss {other}").into()),
        };
        let cfg = TrainConfig {
            loss,
            epochs,
            eval_every: epochs,
            threads,
            device: device.clone(),
            ..TrainConfig::default()
        };
        let dir = PathBuf::from(format!("target/bench_sasrec/{name}"));
        let report = train(&ds, &split, &cfg, &dir, &|e| match e {
            TrainEvent::Epoch {
                epoch,
                loss,
                seconds,
                positions_per_sec,
            } => println!(
                "{name}: epoch {epoch}: loss {loss:.4}, {seconds:.2} s, {positions_per_sec:.0} positions/s"
            ),
            TrainEvent::Evaluated {
                ndcg10, seconds, ..
            } => println!("{name}: valid NDCG@10 {ndcg10:.4}, full-ranking eval {seconds:.2} s"),
            _ => {}
        })?;
        println!(
            "{name}: mean {:.2} s/epoch over {} epochs",
            report.mean_epoch_seconds, report.last_epoch
        );
    }
    Ok(())
}
