//! TIGER end to end: Semantic IDs → training → full-ranking evaluation.
//!
//! ```text
//! cargo run --release -p llmrec-pipelines --example tiger -- \
//!     --dataset amazon-beauty --embeddings beauty-minilm.emb \
//!     --config crates/pipelines/configs/tiger-cpu.json --scheme rq-vae --out runs/tiger
//! ```
//!
//! Flags: `--dataset NAME` (a registered dataset) or `--synthetic-beauty` (random data of
//! Beauty's size, for timing); `--embeddings PATH` (an llmrec embedding table, one row
//! per item in dense item order) or `--random-embeddings DIM`; `--config FILE` (a
//! `RunConfig` JSON); `--scheme rq-vae|random|lsh`; `--ids FILE` (reuse a Semantic-ID
//! table); `--epochs N`, `--max-seconds S`, `--device cpu|cuda` override the config;
//! `--out DIR` (run folder root, default `runs/tiger`).

use std::path::PathBuf;
use std::time::Instant;

use llmrec_core::{Result, Rng};
use llmrec_models::semantic_ids::{IdScheme, SemanticIds};
use llmrec_pipelines::tiger::{self, RunConfig, TrainEvent};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bad = |m: String| llmrec_core::Error::config("args", m);
    let mut cfg: RunConfig = match arg(&args, "--config") {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| llmrec_core::Error::io(&p, e))?;
            serde_json::from_str(&text).map_err(|e| bad(format!("{p}: {e}")))?
        }
        None => RunConfig::default(),
    };
    if let Some(s) = arg(&args, "--scheme") {
        cfg.ids.scheme = serde_json::from_value(serde_json::Value::String(s.clone()))
            .map_err(|_| bad(format!("unknown scheme `{s}`")))?;
    }
    if let Some(n) = arg(&args, "--epochs") {
        cfg.train.epochs = n.parse().map_err(|_| bad("--epochs".into()))?;
    }
    if let Some(n) = arg(&args, "--max-seconds") {
        cfg.train.max_seconds = n.parse().map_err(|_| bad("--max-seconds".into()))?;
    }
    if let Some(d) = arg(&args, "--device") {
        cfg.train.device = d.clone();
        cfg.ids.device = d;
    }
    let t0 = Instant::now();
    let ds = if args.iter().any(|a| a == "--synthetic-beauty") {
        llmrec_data::synthetic::two_blocks(22_363, 12_101, 9, 1)
    } else {
        let name = arg(&args, "--dataset").unwrap_or_else(|| "amazon-beauty".into());
        llmrec_data::load(&name)?
    };
    let split = llmrec_data::split::leave_one_out(&ds);
    eprintln!(
        "dataset {}: {} users, {} items ({:.1}s)",
        ds.name,
        ds.n_users(),
        ds.n_items(),
        t0.elapsed().as_secs_f64()
    );
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "runs/tiger".into()));
    let root = tiger::run_folder(&out, &ds.name, cfg.ids.scheme);

    let ids = if let Some(p) = arg(&args, "--ids") {
        let p = PathBuf::from(p);
        let ids = SemanticIds::load(&p)?;
        ids.check_dataset(&ds, &p)?;
        ids
    } else {
        let emb: Vec<Vec<f32>> = if let Some(p) = arg(&args, "--embeddings") {
            let t = llmrec_llm::read_embeddings(std::path::Path::new(&p))?;
            eprintln!("embeddings: {} x {} ({})", t.len(), t.dim, t.model_id);
            (0..t.len()).map(|i| t.row(i).to_vec()).collect()
        } else if cfg.ids.scheme == IdScheme::Random {
            vec![vec![0.0; cfg.ids.rqvae.model.input_dim]; ds.n_items()]
        } else {
            let dim: usize = arg(&args, "--random-embeddings")
                .ok_or_else(|| bad("give --embeddings PATH or --random-embeddings DIM".into()))?
                .parse()
                .map_err(|_| bad("--random-embeddings DIM".into()))?;
            cfg.ids.rqvae.model.input_dim = dim;
            let mut rng = Rng::new(7);
            (0..ds.n_items())
                .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
                .collect()
        };
        let t = Instant::now();
        let o = tiger::semantic_ids(&ds, &emb, &cfg.ids, Some(&root.join("ids")), &mut |s| {
            if s.epoch % 10 == 0 || s.epoch == 1 {
                eprintln!(
                    "rq-vae epoch {}: loss {:.4} recon {:.4} usage {:?} collisions {:.3} ({:.2}s)",
                    s.epoch, s.loss, s.recon_loss, s.usage, s.collision_rate, s.seconds
                );
            }
        })?;
        eprintln!(
            "semantic ids ({}): usage {:?}, collision rate {:.4}, collision tokens {} ({:.1}s)",
            o.ids.scheme.label(),
            o.ids.usage,
            o.ids.collision_rate,
            o.ids.collision_size,
            t.elapsed().as_secs_f64()
        );
        o.ids
    };

    let mut steps = 0usize;
    let mut total = 0usize;
    let mut last = Instant::now();
    let (model, report) = tiger::train(
        &ds,
        &split,
        &ids,
        &cfg.train,
        &root.join("train"),
        &mut |e| match e {
            TrainEvent::EpochStart { epoch, steps: n } => {
                eprintln!("epoch {epoch}: {n} steps");
                steps = 0;
                total = *n;
            }
            TrainEvent::Step { loss } => {
                steps += 1;
                if last.elapsed().as_secs_f64() > 10.0 {
                    eprintln!("  step {steps}/{total} loss {loss:.4}");
                    last = Instant::now();
                }
            }
            TrainEvent::Validating { users } => eprintln!("  validating on {users} users"),
            TrainEvent::Epoch(r) => eprintln!(
                "  loss {:.4}, {:.0} ex/s, {:.1}s train + {:.1}s valid; valid {:?}",
                r.loss,
                r.examples_per_sec,
                r.seconds,
                r.valid_seconds,
                r.valid
                    .as_ref()
                    .map(|m| (m.get("NDCG@10").copied(), m.get("Recall@10").copied()))
            ),
        },
    )?;
    eprintln!(
        "trained: {} parameters, best epoch {}, stopped by {} after {:.1}s",
        report.parameters, report.best_epoch, report.stopped, report.seconds
    );
    let ev = tiger::eval(
        &model,
        &split,
        &cfg.eval,
        Some(&root.join("train")),
        &|_| {},
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "dataset": ds.name,
            "scheme": ids.scheme.label(),
            "protocol": ev.report.protocol,
            "metrics": ev.report.metrics,
            "invalid_rate_constrained": ev.invalid_rate_constrained,
            "invalid_rate_unconstrained": ev.invalid_rate_unconstrained,
            "cold_start": ev.cold_start,
            "train_seconds": report.seconds,
            "eval_seconds": ev.seconds,
        }))
        .unwrap_or_default()
    );
    Ok(())
}
