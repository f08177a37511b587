//! Fits and evaluates the baselines on ML-1M (SASRec preprocessing), leave-one-out.
//!
//! `cargo run --release -p llmrec-baselines --example ml1m -- [PATH] [MODELS] [CONFIG_JSON]`
//! e.g. `... -- /work/shared/data/ml-1m-sas/sequences.txt bpr,ease '{"bpr":{"epochs":20}}'`.

use std::time::Instant;

use llmrec_baselines::{BaselinesConfig, NAMES, build};
use llmrec_core::{EvalConfig, ItemId, SequenceSplit, Stage, UserSplit, evaluate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map_or("/work/shared/data/ml-1m-sas/sequences.txt", String::as_str);
    let models: Vec<String> = args
        .get(2)
        .map_or(NAMES.join(","), Clone::clone)
        .split(',')
        .map(str::to_string)
        .collect();
    let cfg: BaselinesConfig = match args.get(3) {
        Some(s) => serde_json::from_str(s)?,
        None => BaselinesConfig::default(),
    };

    let text = std::fs::read_to_string(path)?;
    let mut seqs: Vec<Vec<ItemId>> = Vec::new();
    let mut n_items = 0usize;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(u), Some(i)) = (it.next(), it.next()) else {
            continue;
        };
        let (u, i): (usize, usize) = (u.parse()?, i.parse()?);
        if seqs.len() < u {
            seqs.resize(u, Vec::new());
        }
        seqs[u - 1].push((i - 1) as ItemId);
        n_items = n_items.max(i);
    }
    let users: Vec<UserSplit> = seqs
        .into_iter()
        .map(|s| {
            let n = s.len();
            if n < 3 {
                UserSplit {
                    train: s,
                    ..Default::default()
                }
            } else {
                UserSplit {
                    train: s[..n - 2].to_vec(),
                    valid: vec![s[n - 2]],
                    test: vec![s[n - 1]],
                }
            }
        })
        .collect();
    let split = SequenceSplit {
        name: "leave-one-out".into(),
        n_items,
        users,
    };
    let train: Vec<Vec<ItemId>> = split.users.iter().map(|u| u.train.clone()).collect();
    println!("{} users, {n_items} items", train.len());
    let ecfg = EvalConfig::default();
    for name in &models {
        let t = Instant::now();
        let model = build(name, &cfg, &train, n_items, 42)?;
        let fit = t.elapsed().as_secs_f64();
        for stage in [Stage::Valid, Stage::Test] {
            let t = Instant::now();
            let r = evaluate(model.as_ref(), &split.cases(stage), &ecfg, None, &|_| {})?;
            println!(
                "{name:8} {stage:?}: fit {fit:.2}s eval {:.2}s  HR@10 {:.4} NDCG@10 {:.4}",
                t.elapsed().as_secs_f64(),
                r.get("HR@10").unwrap_or(f64::NAN),
                r.get("NDCG@10").unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}
