//! LLM-Rec (Lyu et al., "LLM-Rec: Personalized Recommendation via Prompting Large
//! Language Models", NAACL Findings 2024): an LLM rewrites each item's own text
//! under four prompting strategies, and a content MLP over the sentence embeddings
//! of the original and augmented texts recommends items.
//!
//! - [`prompts`]: the strategies (basic, recommendation-driven, engagement-guided,
//!   recommendation-driven + engagement-guided) and their eight prompts;
//! - [`engagement`]: neighbours by personalized PageRank on the co-engagement graph
//!   of training interactions;
//! - [`augment`]: generation through the batch runner into a versioned artifact;
//! - [`train`]: the content MLP through the shared learner.
//!
//! [`run_eval`] trains one MLP per table row and seed (the pass chosen on
//! validation NDCG@10, full ranking) and reads test once for the kept weights; the
//! foundation's baselines are scored on the same split.

pub mod augment;
pub mod engagement;
pub mod prompts;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmrec_baselines::BaselinesConfig;
use llmrec_core::io::write_json;
use llmrec_core::metrics::mean_std;
use llmrec_core::{Dataset, Error, EvalConfig, Result, SequenceSplit, Stage, evaluate};
use llmrec_llm::Embedder;
use llmrec_models::TrainEvent;
use llmrec_models::content_mlp::ContentMlpConfig;
use serde::{Deserialize, Serialize};

use augment::AugmentConfig;
use engagement::EngagementConfig;
use prompts::{PromptKind, Strategy, describe};
use train::{MlpRun, MlpTrainConfig, TrainedMlp, train_mlp};

/// Settings of `llmrec llmrec` (documented in `configs/llm_rec.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LlmRecConfig {
    /// Neighbour selection for the engagement prompts.
    pub engagement: EngagementConfig,
    /// Text generation.
    pub augment: AugmentConfig,
    /// The content MLP.
    pub model: ContentMlpConfig,
    /// Its training.
    pub train: MlpTrainConfig,
    /// The evaluator (full ranking, history excluded, ties against the model).
    pub evaluator: EvalConfig,
    /// What `llmrec llmrec eval` runs.
    pub eval: TableConfig,
}

impl LlmRecConfig {
    /// Checks every section, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        self.engagement.validate()?;
        self.model.validate("model")?;
        self.train.validate()?;
        self.evaluator.validate()?;
        if self.eval.seeds.is_empty() {
            return Err(Error::config("eval.seeds", "give at least one seed"));
        }
        for r in &self.eval.rows {
            Row::parse(r)?;
        }
        Ok(())
    }
}

/// The rows and seeds of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Content MLP rows: `original`, a strategy (`basic`, `rec`, `eng`, `rec-eng`),
    /// `all`, or the control `repeat-N` (the original embedding N times: the width
    /// of a strategy row, no new information).
    pub rows: Vec<String>,
    /// Seeds of the weights, order and negatives. Default [1, 2, 3].
    pub seeds: Vec<u64>,
    /// Baselines scored on the same split (fitted on training only).
    pub baselines: Vec<String>,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            rows: [
                "original", "repeat-2", "repeat-4", "repeat-9", "basic", "rec", "eng", "rec-eng",
                "all",
            ]
            .map(String::from)
            .to_vec(),
            seeds: vec![1, 2, 3],
            baselines: vec!["mostpop".into(), "ease".into()],
        }
    }
}

/// One part of an item's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The embedding of the item's own description.
    Original,
    /// The embedding of one augmented text.
    Augmented(PromptKind),
}

/// A content MLP row: its name and its feature parts, concatenated in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// As in the config.
    pub name: String,
    /// The parts.
    pub parts: Vec<Part>,
}

impl Row {
    /// Parses a row name (see [`TableConfig::rows`]).
    pub fn parse(name: &str) -> Result<Row> {
        let aug = |ss: &[Strategy]| {
            std::iter::once(Part::Original)
                .chain(
                    ss.iter()
                        .flat_map(|s| s.prompts().iter().map(|&k| Part::Augmented(k))),
                )
                .collect()
        };
        let parts = match name {
            "original" => vec![Part::Original],
            "all" => aug(&Strategy::ALL),
            _ => {
                if let Some(s) = Strategy::ALL.iter().find(|s| s.name() == name) {
                    aug(&[*s])
                } else if let Some(n) = name
                    .strip_prefix("repeat-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n >= 1)
                {
                    vec![Part::Original; n]
                } else {
                    return Err(Error::config(
                        "eval.rows",
                        format!(
                            "unknown row `{name}`; expected original, basic, rec, eng, \
                             rec-eng, all or repeat-N"
                        ),
                    ));
                }
            }
        };
        Ok(Row {
            name: name.to_string(),
            parts,
        })
    }
}

/// Where `llmrec llmrec eval` reads texts and keeps encodings.
pub struct EvalInputs<'a> {
    /// The MiniLM embedder.
    pub embedder: &'a Embedder,
    /// An artifact of `llmrec llmrec augment` (needed by every row but `original`
    /// and `repeat-N`).
    pub augment_dir: Option<&'a Path>,
    /// A SASRec checkpoint to score on the same split, if any.
    pub sasrec: Option<&'a Path>,
}

/// Test metrics of one row: mean and standard deviation over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// Row name (`original`, `basic`, ..., or a baseline).
    pub row: String,
    /// Feature width (0 for baselines).
    pub width: usize,
    /// Seeds averaged (1 for deterministic baselines).
    pub seeds: usize,
    /// Mean of each test metric.
    pub mean: BTreeMap<String, f64>,
    /// Standard deviation of each test metric.
    pub std: BTreeMap<String, f64>,
    /// NDCG@10 lift over the `original` row, in percent.
    pub ndcg10_lift_pct: Option<f64>,
    /// Mean training seconds.
    pub train_seconds: f64,
}

/// One trained MLP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpResult {
    /// Row name.
    pub row: String,
    /// Seed.
    pub seed: u64,
    /// The training result (validation and test).
    pub result: TrainedMlp,
}

/// What `llmrec llmrec eval` reports (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmRecReport {
    /// Dataset name.
    pub dataset: String,
    /// The split.
    pub split: String,
    /// The ranking protocol, in words.
    pub protocol: String,
    /// The augmentation artifact read, if any.
    pub augment_dir: Option<PathBuf>,
    /// Its model and generation cost, if any.
    pub augment: Option<augment::AugmentManifest>,
    /// Every MLP trained.
    pub runs: Vec<MlpResult>,
    /// The table: MLP rows, then baselines.
    pub rows: Vec<TableRow>,
}

/// The metrics the table shows.
pub const METRICS: [&str; 4] = ["NDCG@10", "Recall@10", "Precision@10", "NDCG@20"];

/// Trains every row × seed (resuming: a run folder with a `result.json` is read,
/// not retrained), scores the baselines, and returns the table.
pub fn run_eval(
    ds: &Dataset,
    split: &SequenceSplit,
    cfg: &LlmRecConfig,
    inputs: &EvalInputs<'_>,
    out: &Path,
    log: &mut dyn FnMut(&str),
    event: &mut dyn FnMut(&str, &TrainEvent),
) -> Result<LlmRecReport> {
    cfg.validate()?;
    let rows: Vec<Row> = cfg
        .eval
        .rows
        .iter()
        .map(|r| Row::parse(r))
        .collect::<Result<_>>()?;
    let needs_llm = rows
        .iter()
        .any(|r| r.parts.iter().any(|p| matches!(p, Part::Augmented(_))));
    let (manifest, texts) = if needs_llm {
        let dir = inputs.augment_dir.ok_or_else(|| {
            Error::config(
                "--augment-dir",
                "rows other than original and repeat-N need an artifact of `llmrec llmrec augment`",
            )
        })?;
        let (m, t) = augment::read_artifact(dir, ds)?;
        (Some(m), t)
    } else {
        (None, BTreeMap::new())
    };
    // Encode each part once (cached in the run folder).
    let emb_dir = out.join("embeddings");
    std::fs::create_dir_all(&emb_dir).map_err(|e| Error::io(&emb_dir, e))?;
    let mut encoded: BTreeMap<Part, Vec<Vec<f32>>> = BTreeMap::new();
    let quiet = |_: usize, _: usize| {};
    for part in rows.iter().flat_map(|r| r.parts.iter().copied()) {
        if encoded.contains_key(&part) {
            continue;
        }
        let (name, list): (&str, Vec<String>) = match part {
            Part::Original => ("original", ds.item_text.iter().map(describe).collect()),
            Part::Augmented(k) => {
                let col = texts.get(&k);
                let missing =
                    (0..ds.n_items()).find(|&i| col.and_then(|c| c[i].as_ref()).is_none());
                if let Some(i) = missing {
                    return Err(Error::config(
                        "--augment-dir",
                        format!(
                            "the artifact has no `{}` text for item {} (run `llmrec llmrec \
                             augment` for every item with that prompt's strategy)",
                            k.name(),
                            ds.items.raw(i as u32)
                        ),
                    ));
                }
                let list = col
                    .map(|c| c.iter().map(|t| t.clone().unwrap_or_default()).collect())
                    .unwrap_or_default();
                (k.name(), list)
            }
        };
        log(&format!(
            "encoding the `{name}` texts of {} items",
            ds.n_items()
        ));
        let path = emb_dir.join(format!("{name}.minilm.emb"));
        let v = llmrec_llm::encode_cached(inputs.embedder, &list, &path, &quiet)?;
        encoded.insert(part, v);
    }
    let mut runs = Vec::new();
    let mut table = Vec::new();
    for row in &rows {
        let width: usize = row.parts.iter().map(|p| encoded[p][0].len()).sum();
        let mut features = Vec::with_capacity(ds.n_items() * width);
        let columns: Vec<&Vec<Vec<f32>>> = row.parts.iter().map(|p| &encoded[p]).collect();
        for i in 0..ds.n_items() {
            for c in &columns {
                features.extend_from_slice(&c[i]);
            }
        }
        let mut results = Vec::new();
        for &seed in &cfg.eval.seeds {
            let name = format!("mlp-{}-seed{seed}", row.name);
            let run_dir = out.join(&name);
            let done = run_dir.join("result.json");
            let result: TrainedMlp = match std::fs::read_to_string(&done)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                Some(r) => {
                    log(&format!("{name}: already trained, result read"));
                    r
                }
                None => {
                    let run = MlpRun {
                        model: &cfg.model,
                        train: &cfg.train,
                        eval: &cfg.evaluator,
                        features: &features,
                        width,
                        row: &row.name,
                        seed,
                    };
                    let r = train_mlp(&run, split, &run_dir, &mut |e| event(&name, e))?;
                    write_json(&done, &r)?;
                    r
                }
            };
            log(&format!(
                "{name}: best pass {} of {}, valid NDCG@10 {:.4}, test NDCG@10 {:.4}",
                result.best_epoch,
                result.epochs_run,
                result.valid.get("NDCG@10").copied().unwrap_or(f64::NAN),
                result.test.get("NDCG@10").unwrap_or(f64::NAN),
            ));
            results.push(result.clone());
            runs.push(MlpResult {
                row: row.name.clone(),
                seed,
                result,
            });
        }
        let reports: Vec<&llmrec_core::EvalReport> = results.iter().map(|r| &r.test).collect();
        let mut t = table_row(&row.name, width, &reports);
        t.train_seconds =
            results.iter().map(|r| r.train_seconds).sum::<f64>() / results.len().max(1) as f64;
        table.push(t);
    }
    let base = table
        .iter()
        .find(|r| r.row == "original")
        .and_then(|r| r.mean.get("NDCG@10").copied());
    for r in &mut table {
        r.ndcg10_lift_pct = base.and_then(|b| {
            r.mean
                .get("NDCG@10")
                .map(|&x| 100.0 * (x - b) / b.max(1e-12))
        });
    }
    let test_cases = split.cases(Stage::Test);
    for name in &cfg.eval.baselines {
        log(&format!("scoring baseline {name}"));
        let model = crate::registry::build(
            name,
            &BaselinesConfig::default(),
            ds,
            split,
            cfg.eval.seeds[0],
            None,
        )?;
        let rep = evaluate(model.as_ref(), &test_cases, &cfg.evaluator, None, &|_| {})?;
        table.push(table_row(name, 0, &[&rep]));
    }
    if let Some(ckpt) = inputs.sasrec {
        log("scoring SASRec");
        let model = crate::registry::build(
            "sasrec",
            &BaselinesConfig::default(),
            ds,
            split,
            0,
            Some(ckpt),
        )?;
        let rep = evaluate(model.as_ref(), &test_cases, &cfg.evaluator, None, &|_| {})?;
        table.push(table_row("sasrec", 0, &[&rep]));
    }
    Ok(LlmRecReport {
        dataset: ds.name.clone(),
        split: split.name.clone(),
        protocol: cfg.evaluator.protocol.label(
            ds.n_items(),
            cfg.evaluator.exclude_history,
            cfg.evaluator.ties,
        ),
        augment_dir: inputs.augment_dir.map(Path::to_path_buf),
        augment: manifest,
        runs,
        rows: table,
    })
}

fn table_row(name: &str, width: usize, reports: &[&llmrec_core::EvalReport]) -> TableRow {
    let mut mean = BTreeMap::new();
    let mut std = BTreeMap::new();
    for m in METRICS {
        let xs: Vec<f64> = reports.iter().filter_map(|r| r.get(m)).collect();
        if xs.is_empty() {
            continue;
        }
        let (a, s) = mean_std(&xs);
        mean.insert(m.to_string(), a);
        std.insert(m.to_string(), s);
    }
    TableRow {
        row: name.to_string(),
        width,
        seeds: reports.len(),
        mean,
        std,
        ndcg10_lift_pct: None,
        train_seconds: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_into_their_parts() {
        assert_eq!(Row::parse("original").unwrap().parts, vec![Part::Original]);
        assert_eq!(Row::parse("repeat-4").unwrap().parts.len(), 4);
        assert_eq!(Row::parse("basic").unwrap().parts.len(), 4);
        assert_eq!(Row::parse("eng").unwrap().parts.len(), 2);
        assert_eq!(Row::parse("all").unwrap().parts.len(), 9);
        let e = Row::parse("fancy").unwrap_err().to_string();
        assert!(e.contains("eval.rows") && e.contains("fancy"), "{e}");
        assert!(Row::parse("repeat-0").is_err());
    }
}
