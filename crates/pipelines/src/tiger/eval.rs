//! Step 4: full-ranking evaluation with the invalid-ID diagnostic and cold-start
//! buckets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use llmrec_core::eval::{UserResult, sample_cases};
use llmrec_core::io::write_json;
use llmrec_core::{EvalConfig, EvalReport, Query, Result, SequenceSplit, Stage, evaluate};
use serde::{Deserialize, Serialize};

use super::*;

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// The core evaluator's settings (full ranking, history excluded).
    pub eval: EvalConfig,
    /// Which held-out items. Default test.
    pub stage: Stage,
    /// Beams (items with a real score per user). Default 30.
    pub beam_size: usize,
    /// Users for the invalid-ID diagnostic (seeded sample; 0: all). Default 1000.
    pub invalid_users: usize,
    /// The invalid-ID rate counts the top this many beams. Default 10.
    pub invalid_k: usize,
    /// Targets seen at most this often in training count as rare. Default 4.
    pub rare_max: usize,
    /// When the evaluator excludes history items, keep them out of the beams too, so
    /// the beams hold only items that can count. Default true; false evaluates as
    /// before this option, with history items taking beam slots. (Validation during
    /// training always skips them when the evaluator excludes history.)
    pub beam_skips_history: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            eval: EvalConfig::default(),
            stage: Stage::Test,
            beam_size: 30,
            invalid_users: 1000,
            invalid_k: 10,
            rare_max: 4,
            beam_skips_history: true,
        }
    }
}

/// Metrics of the users whose target falls in one training-frequency bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// `unseen` (never in training), `rare` (1..=rare_max) or `frequent`.
    pub label: String,
    /// Users in the bucket.
    pub users: usize,
    /// Metric name to mean value.
    pub metrics: BTreeMap<String, f64>,
}

/// Result of [`eval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TigerEval {
    /// The core evaluator's report (constrained decoding).
    pub report: EvalReport,
    /// Invalid IDs in the top `invalid_k` with the trie constraint (always 0).
    pub invalid_rate_constrained: f64,
    /// Invalid IDs in the top `invalid_k` without it (diagnostic; the paper: 0.1–1.6%).
    pub invalid_rate_unconstrained: f64,
    /// Users in the invalid-ID diagnostic.
    pub invalid_users: usize,
    /// Metrics by how often the target occurs in the training sequences.
    pub cold_start: Vec<Bucket>,
    /// Beams per user.
    pub beam_size: usize,
    /// Whether the beams skipped each user's history items.
    pub beam_skips_history: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Evaluates `model` on `split` (full ranking over all items, the core evaluator), with
/// the invalid-ID diagnostic and cold-start buckets; writes `eval.json` to `run_dir`.
/// `progress` gets the number of users finished per batch.
pub fn eval(
    model: &Tiger,
    split: &SequenceSplit,
    opts: &EvalOptions,
    run_dir: Option<&Path>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<TigerEval> {
    let start = Instant::now();
    let mut rec = model.clone();
    rec.beam_size = opts.beam_size.max(1);
    rec.constrained = true;
    rec.exclude_history = opts.beam_skips_history && opts.eval.exclude_history;
    let cases = split.cases(opts.stage);
    let cfg = EvalConfig {
        per_user: true,
        ..opts.eval.clone()
    };
    let mut report = evaluate(&rec, &cases, &cfg, None, progress)?;
    let per_user = report.per_user.take().unwrap_or_default();

    let pop = split.train_popularity();
    let mut groups: BTreeMap<&str, Vec<&UserResult>> = BTreeMap::new();
    for r in &per_user {
        let Some(&t) = r.targets.first() else {
            continue;
        };
        let c = pop.get(t as usize).copied().unwrap_or(0.0) as usize;
        let label = if c == 0 {
            "unseen"
        } else if c <= opts.rare_max {
            "rare"
        } else {
            "frequent"
        };
        groups.entry(label).or_default().push(r);
    }
    let cold_start = groups
        .into_iter()
        .map(|(label, ranks)| {
            let mut metrics = BTreeMap::new();
            for &k in &opts.eval.ks {
                let (mut recall, mut ndcg, mut hr) = (0.0, 0.0, 0.0);
                for r in &ranks {
                    let m = r.metrics(k, opts.eval.ties);
                    recall += m.recall;
                    ndcg += m.ndcg;
                    hr += m.hr;
                }
                let n = ranks.len().max(1) as f64;
                metrics.insert(format!("Recall@{k}"), recall / n);
                metrics.insert(format!("NDCG@{k}"), ndcg / n);
                metrics.insert(format!("HR@{k}"), hr / n);
            }
            Bucket {
                label: format!(
                    "{label} ({})",
                    match label {
                        "unseen" => "0 training occurrences".to_string(),
                        "rare" => format!("1-{} training occurrences", opts.rare_max),
                        _ => format!("> {} training occurrences", opts.rare_max),
                    }
                ),
                users: ranks.len(),
                metrics,
            }
        })
        .collect();

    let diag = sample_cases(cases, opts.invalid_users, opts.eval.seed);
    let queries: Vec<Query<'_>> = diag
        .iter()
        .map(|c| Query::new(c.user, &c.history))
        .collect();
    let invalid_rate_constrained = rec.invalid_rate(&queries, opts.invalid_k)?;
    rec.constrained = false;
    let invalid_rate_unconstrained = rec.invalid_rate(&queries, opts.invalid_k)?;

    let out = TigerEval {
        report,
        invalid_rate_constrained,
        invalid_rate_unconstrained,
        invalid_users: queries.len(),
        cold_start,
        beam_size: rec.beam_size,
        beam_skips_history: rec.exclude_history,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(d) = run_dir {
        mkdir(d)?;
        write_json(&d.join("eval.json"), &out)?;
    }
    Ok(out)
}
