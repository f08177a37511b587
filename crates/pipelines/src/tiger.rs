//! The TIGER pipeline: item embeddings → Semantic IDs → seq2seq training → choice on
//! validation → evaluation. The network, its training and its checkpoints live in
//! [`llmrec_models::tiger`]; this module composes them.
//!
//! 1. [`semantic_ids`]: RQ-VAE (or RQ-KMeans, or the random / LSH baselines) over the
//!    item text embeddings of **every** catalogue item, so items never seen in training
//!    still get an ID from their text (cold start), optionally fused with collaborative
//!    vectors of the training graph. Writes `semantic_ids.json` (the versioned artifact),
//!    `rqvae_metrics.jsonl`, `rqvae.svg`, `rqvae_report.json` and the RQ-VAE weights
//!    `rqvae.safetensors` with the input standardisation in
//!    `rqvae_standardization.json`.
//! 2. [`train`] (from [`llmrec_models::tiger`], on the shared
//!    [`llmrec_models::learner`]): teacher-forced training on every prefix of the
//!    training sequences, validation by constrained beam search, early stopping,
//!    `best/`, `last/` (exact resumption) and kept epochs.
//! 3. [`select`]: the model to test, chosen on validation among `best/` and averages of
//!    the last kept epochs.
//! 4. [`eval`]: full-ranking evaluation of the leave-one-out split with the core
//!    evaluator, the invalid-ID rate with constraints on (must be 0) and off (a
//!    diagnostic), and metrics by how often the target occurs in training (cold start).
//!
//! Every file is written through a temp file and a rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmrec_core::eval::{UserResult, sample_cases};
use llmrec_core::io::{write_atomic, write_with};
use llmrec_core::plot::{Series, chart};
use llmrec_core::{
    Dataset, Error, EvalConfig, EvalReport, Query, Result, SequenceSplit, Stage, evaluate,
};
use llmrec_models::semantic_ids::rqvae::{self, EpochStats, RqVaeReport};
use llmrec_models::semantic_ids::spectral;
use llmrec_models::semantic_ids::{self, IdScheme, SemanticIds};
pub use llmrec_models::tiger::{
    AveragedFrom, CHECKPOINT_VERSION, Tiger, TrainConfig, TrainReport, average_checkpoints,
    checkpoint_provenance, load_checkpoint, provenance, train,
};
pub use llmrec_models::{EpochRecord, TrainEvent};
use serde::{Deserialize, Serialize};

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(format!("json: {e}")))
}

fn jsonl<T: Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        out.extend(serde_json::to_vec(r).map_err(|e| Error::Invalid(format!("json: {e}")))?);
        out.push(b'\n');
    }
    Ok(out)
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// All settings of a TIGER run (IDs, training, evaluation), e.g. one JSON file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Semantic-ID step.
    pub ids: IdsConfig,
    /// Training step.
    pub train: TrainConfig,
    /// Evaluation step.
    pub eval: EvalOptions,
    /// How the evaluated model is chosen on validation after training.
    pub select: SelectConfig,
}

// ---------------------------------------------------------------------------------------
// 1. Semantic IDs

/// Settings of the Semantic-ID step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdsConfig {
    /// Which IDs: `rq-vae` (default), `rq-kmeans`, `random` or `lsh`.
    pub scheme: IdScheme,
    /// RQ-VAE settings. Its `model.levels`, `model.codebook_size` and `seed` also shape
    /// the baselines, so every scheme has the same shape.
    pub rqvae: rqvae::TrainConfig,
    /// Return an error (after writing the run folder) when the RQ-VAE's codebook usage
    /// is below `rqvae.min_usage` on some level. Default true.
    pub fail_on_collapse: bool,
    /// Device for the RQ-VAE (`cpu`, `cuda`, `cuda:N`). Default `cpu`.
    pub device: String,
    /// Collaborative vectors fused into the text embeddings before the RQ-VAE (off by
    /// default, which is the paper's text-only TIGER).
    pub collab: CollabConfig,
}

impl Default for IdsConfig {
    fn default() -> Self {
        IdsConfig {
            scheme: IdScheme::RqVae,
            rqvae: rqvae::TrainConfig::default(),
            fail_on_collapse: true,
            device: "cpu".into(),
            collab: CollabConfig::default(),
        }
    }
}

/// Fusion of collaborative signal into the RQ-VAE's input (`ids.collab`): spectral item
/// vectors of the **training** user-item graph of the leave-one-out split
/// ([`llmrec_models::semantic_ids::spectral`]) are standardised, weighted and appended to the
/// standardised text embeddings, and the RQ-VAE runs on the result without a second
/// standardisation. Items without training interactions (cold start) get the mean,
/// i.e. zeros, in the collaborative part, so their IDs come from their text alone. This
/// is an extension in the spirit of LETTER and of P5's collaborative indexing, not
/// part of the TIGER paper; results with it must say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollabConfig {
    /// Share of the fused vector's variance that is collaborative, in `[0, 1)`; 0 turns
    /// the fusion off. Default 0.
    pub share: f64,
    /// The spectral embedding.
    pub spectral: spectral::Config,
}

impl Default for CollabConfig {
    fn default() -> Self {
        CollabConfig {
            share: 0.0,
            spectral: spectral::Config::default(),
        }
    }
}

/// What the fusion did, written to `collab_report.json`.
#[derive(Debug, Clone, Serialize)]
struct CollabReport {
    share: f64,
    /// Factor on each standardised collaborative dimension.
    weight: f64,
    /// Items with training interactions (the others get zeros).
    covered: usize,
    items: usize,
    eigenvalues: Vec<f64>,
}

/// Standardised text plus `weight ×` standardised collaborative vectors (see
/// [`CollabConfig`]). Text is standardised only when `standardize_text`.
fn fuse(
    text: &[Vec<f32>],
    cf: &[Vec<f32>],
    covered: &[bool],
    share: f64,
    standardize_text: bool,
) -> Result<(Vec<Vec<f32>>, f64)> {
    if !(0.0..1.0).contains(&share) {
        return Err(Error::config(
            "ids.collab.share",
            format!("must be in [0, 1), got {share}"),
        ));
    }
    let d_text = semantic_ids::check_embeddings(text)?;
    let d_cf = semantic_ids::check_embeddings(cf)?;
    let text = if standardize_text {
        semantic_ids::standardize(text)?
    } else {
        text.to_vec()
    };
    let known: Vec<Vec<f32>> = cf
        .iter()
        .zip(covered)
        .filter(|(_, c)| **c)
        .map(|(v, _)| v.clone())
        .collect();
    if known.is_empty() {
        return Err(Error::Invalid(
            "ids.collab: no item has a training interaction".into(),
        ));
    }
    let st = semantic_ids::Standardization::fit(&known)?;
    let weight = (share / (1.0 - share) * d_text as f64 / d_cf as f64).sqrt();
    let fused = text
        .into_iter()
        .zip(cf)
        .zip(covered)
        .map(|((mut t, c), &cov)| {
            if cov {
                let z = st.apply(std::slice::from_ref(c))?;
                t.extend(z[0].iter().map(|x| (*x as f64 * weight) as f32));
            } else {
                t.extend(std::iter::repeat_n(0.0, d_cf));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((fused, weight))
}

/// Result of [`semantic_ids`].
#[derive(Debug, Clone)]
pub struct IdsOutput {
    /// The table (already checked and tied to the dataset).
    pub ids: SemanticIds,
    /// The RQ-VAE run, for the `rq-vae` scheme.
    pub report: Option<RqVaeReport>,
}

/// Makes the Semantic-ID table of `dataset` from one embedding per item (dense item
/// order; e.g. MiniLM vectors of [`llmrec_core::ItemText::to_text`]).
///
/// `progress` sees every RQ-VAE epoch. With `run_dir`, writes the files listed in the
/// module docs there.
pub fn semantic_ids(
    dataset: &Dataset,
    embeddings: &[Vec<f32>],
    cfg: &IdsConfig,
    run_dir: Option<&Path>,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<IdsOutput> {
    if embeddings.len() != dataset.n_items() {
        return Err(Error::Invalid(format!(
            "{} embeddings for {} items of `{}`",
            embeddings.len(),
            dataset.n_items(),
            dataset.name
        )));
    }
    if let Some(d) = run_dir {
        mkdir(d)?;
        write_atomic(&d.join("ids_config.json"), &json(cfg)?)?;
    }
    let levels = cfg.rqvae.model.levels;
    let k = cfg.rqvae.model.codebook_size;
    let seed = cfg.rqvae.seed;
    let mut rqvae_cfg = cfg.rqvae.clone();
    let mut collab = None;
    let fused;
    if !(0.0..1.0).contains(&cfg.collab.share) {
        return Err(Error::config(
            "ids.collab.share",
            format!("must be in [0, 1), got {}", cfg.collab.share),
        ));
    }
    let embeddings = if cfg.collab.share > 0.0 {
        let dim = semantic_ids::check_embeddings(embeddings)?;
        if dim != cfg.rqvae.model.input_dim {
            return Err(Error::config(
                "ids.rqvae.model.input_dim",
                format!(
                    "is {}, but the item embeddings have {dim} dimensions",
                    cfg.rqvae.model.input_dim
                ),
            ));
        }
        if cfg.scheme != IdScheme::RqVae {
            return Err(Error::config(
                "ids.collab.share",
                format!(
                    "collaborative fusion needs the rq-vae scheme, not {}",
                    cfg.scheme.label()
                ),
            ));
        }
        // Training part of the same leave-one-out split that training and evaluation
        // use: no validation or test item enters the graph.
        let split = llmrec_data::split::leave_one_out(dataset);
        let spec = spectral::item_embeddings(
            &split.train_sequences(),
            dataset.n_items(),
            &cfg.collab.spectral,
        )?;
        let (f, weight) = fuse(
            embeddings,
            &spec.vectors,
            &spec.covered,
            cfg.collab.share,
            cfg.rqvae.standardize,
        )?;
        fused = f;
        rqvae_cfg.standardize = false;
        rqvae_cfg.model.input_dim = fused[0].len();
        collab = Some(CollabReport {
            share: cfg.collab.share,
            weight,
            covered: spec.covered.iter().filter(|&&c| c).count(),
            items: dataset.n_items(),
            eigenvalues: spec.eigenvalues,
        });
        if let Some(d) = run_dir {
            write_atomic(&d.join("collab_report.json"), &json(&collab)?)?;
        }
        &fused[..]
    } else {
        embeddings
    };
    let (mut ids, report) = match cfg.scheme {
        IdScheme::Random => (
            semantic_ids::random_ids(dataset.n_items(), levels, k, seed)?,
            None,
        ),
        IdScheme::Lsh => (semantic_ids::lsh_ids(embeddings, levels, k, seed)?, None),
        IdScheme::RqKmeans => (
            semantic_ids::rq_kmeans_ids(embeddings, levels, k, cfg.rqvae.kmeans_iters, seed)?,
            None,
        ),
        IdScheme::RqVae => {
            let dev = llmrec_models::parse_device(&cfg.device)?;
            let mut epochs = Vec::new();
            let trained = rqvae::train(embeddings, &rqvae_cfg, &dev, &mut |s| {
                progress(s);
                epochs.push(s.clone());
                if let Some(d) = run_dir {
                    // Best effort mid-run; the final write below reports errors.
                    let _ = jsonl(&epochs)
                        .and_then(|b| write_atomic(&d.join("rqvae_metrics.jsonl"), &b));
                }
            })?;
            if let Some(d) = run_dir {
                write_atomic(
                    &d.join("rqvae_metrics.jsonl"),
                    &jsonl(&trained.report.epochs)?,
                )?;
                write_atomic(&d.join("rqvae_report.json"), &json(&trained.report)?)?;
                write_atomic(&d.join("rqvae.svg"), rqvae_plot(&trained.report).as_bytes())?;
                if let Some(st) = &trained.standardization {
                    write_atomic(&d.join("rqvae_standardization.json"), &json(st)?)?;
                }
                write_with(&d.join("rqvae.safetensors"), |tmp| {
                    trained.varmap.save(tmp).map_err(|e| {
                        llmrec_models::checkpoint::artifact(
                            tmp,
                            format!("cannot write RQ-VAE weights: {e}"),
                        )
                    })
                })?;
            }
            (trained.semantic_ids()?, Some(trained.report))
        }
    };
    if let (Some(c), serde_json::Value::Object(m)) = (&collab, &mut ids.config) {
        m.insert(
            "collab".into(),
            serde_json::json!({"config": cfg.collab, "report": c}),
        );
    }
    let ids = ids.for_dataset(dataset);
    ids.validate()?;
    if let Some(d) = run_dir {
        ids.save(&d.join("semantic_ids.json"))?;
    }
    if cfg.fail_on_collapse
        && let Some(r) = &report
        && let Some(why) = &r.failure
    {
        return Err(Error::model("rq-vae", format!("run failed: {why}")));
    }
    Ok(IdsOutput { ids, report })
}

fn rqvae_plot(r: &RqVaeReport) -> String {
    let levels = r.usage.len();
    let names: Vec<String> = (0..levels).map(|l| format!("usage L{l}")).collect();
    let mut series: Vec<Series<'_>> = vec![Series {
        name: "recon loss",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.recon_loss))
            .collect(),
    }];
    for (l, name) in names.iter().enumerate() {
        series.push(Series {
            name,
            points: r
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.usage.get(l).copied().unwrap_or(f64::NAN)))
                .collect(),
        });
    }
    series.push(Series {
        name: "collision rate",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.collision_rate))
            .collect(),
    });
    chart(
        "RQ-VAE: reconstruction loss and codebook usage",
        "epoch",
        &series,
    )
}

// ---------------------------------------------------------------------------------------
// 2. Training: `llmrec_models::tiger::train` on the shared learner (re-exported above).

// ---------------------------------------------------------------------------------------
// 3. Evaluation

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
        write_atomic(&d.join("eval.json"), &json(&out)?)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// 4. Choosing the model on validation

/// How the model that is tested is chosen, on validation only, after training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    /// Candidate averages: for each `N` here, the element-wise mean of the last `N`
    /// epochs kept by `train.keep_every`, up to the final epoch. The candidates and the
    /// best validated epoch (`best/`) are all evaluated on the validation stage with the
    /// `eval` settings; the one with the highest validation NDCG@10 is tested (a tie goes
    /// to the earlier candidate: `best/`, then the averages in this order). Empty (the
    /// default): `best/` is tested without a selection step.
    pub average_last: Vec<usize>,
}

impl SelectConfig {
    /// Checks the values.
    pub fn validate(&self, train: &TrainConfig) -> Result<()> {
        if self.average_last.is_empty() {
            return Ok(());
        }
        if self.average_last.iter().any(|&n| n < 2) {
            return Err(Error::config(
                "select.average_last",
                "each window must average at least 2 epochs",
            ));
        }
        if train.keep_every == 0 {
            return Err(Error::config(
                "select.average_last",
                "averages need kept epochs: set train.keep_every (e.g. 1)",
            ));
        }
        Ok(())
    }
}

/// One model the selection step evaluated on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `best` or `mean of last N`.
    pub name: String,
    /// Its checkpoint folder.
    pub checkpoint: PathBuf,
    /// The training epochs behind it.
    pub epochs: Vec<usize>,
    /// Validation metrics (full ranking, the `eval` settings on the validation stage).
    pub valid: BTreeMap<String, f64>,
}

/// What the selection step chose, and from what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The metric compared (validation NDCG@10).
    pub metric: String,
    /// Every candidate with its validation metrics.
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate.
    pub chosen: usize,
}

impl Selection {
    /// The chosen candidate.
    pub fn chosen(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }
}

/// The epochs kept under `train_dir/epochs/` (`epoch-NNN`), ascending.
fn kept_epochs(train_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = train_dir.join("epochs");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        out.push((epoch, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Chooses the model to test on validation, as `cfg.select` says: evaluates `best/`
/// and each average of the last kept epochs of the run in `train_dir` on the validation
/// stage, and writes the averages (`train_dir/mean-last-N/`) and `selection.json`. The
/// test stage is not read here.
pub fn select(
    dataset: &Dataset,
    split: &SequenceSplit,
    cfg: &RunConfig,
    train_dir: &Path,
    progress: &(dyn Fn(&str, usize) + Sync),
) -> Result<Selection> {
    cfg.select.validate(&cfg.train)?;
    let kept = kept_epochs(train_dir)?;
    let last_epoch = kept.last().map_or(0, |k| k.0);
    let best_dir = llmrec_models::checkpoint::settled(&train_dir.join("best"));
    // Read (and checked against the dataset) like any checkpoint.
    checkpoint_provenance(&best_dir, dataset)?;
    let best_epoch = llmrec_models::learner::checkpoint_epoch(&best_dir).unwrap_or(0);
    let mut candidates = vec![("best".to_string(), best_dir, vec![best_epoch])];
    for &n in &cfg.select.average_last {
        if kept.len() < n {
            return Err(Error::Invalid(format!(
                "select.average_last: {n} epochs to average, but {} kept {} (up to epoch {last_epoch})",
                train_dir.join("epochs").display(),
                kept.len()
            )));
        }
        let window = &kept[kept.len() - n..];
        let out = train_dir.join(format!("mean-last-{n}"));
        let dirs: Vec<PathBuf> = window.iter().map(|k| k.1.clone()).collect();
        average_checkpoints(&dirs, dataset, &out)?;
        candidates.push((
            format!("mean of last {n}"),
            out,
            window.iter().map(|k| k.0).collect(),
        ));
    }
    let opts = EvalOptions {
        stage: Stage::Valid,
        ..cfg.eval.clone()
    };
    let metric = "NDCG@10".to_string();
    let mut scored = Vec::with_capacity(candidates.len());
    for (name, checkpoint, epochs) in candidates {
        let model = load_checkpoint(&checkpoint, dataset, &cfg.train.device)?;
        let ev = eval(&model, split, &opts, None, &|n| progress(&name, n))?;
        scored.push(Candidate {
            name,
            checkpoint,
            epochs,
            valid: ev.report.metrics,
        });
    }
    let score = |c: &Candidate| c.valid.get(&metric).copied().unwrap_or(f64::NEG_INFINITY);
    let mut chosen = 0;
    for (i, c) in scored.iter().enumerate() {
        if score(c) > score(&scored[chosen]) {
            chosen = i;
        }
    }
    let selection = Selection {
        metric,
        candidates: scored,
        chosen,
    };
    write_atomic(&train_dir.join("selection.json"), &json(&selection)?)?;
    Ok(selection)
}

/// The standard run-folder layout under `root` for a dataset and ID scheme:
/// `root/<dataset>/<scheme>/`.
pub fn run_folder(root: &Path, dataset: &str, scheme: IdScheme) -> PathBuf {
    root.join(dataset).join(scheme.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text columns come out standardised, the collaborative column has mean 0 and
    /// variance `weight²` over covered items, so its share of the variance is `share`;
    /// an uncovered item gets 0 there.
    #[test]
    fn fusion_weights_the_collaborative_part_by_its_share() {
        let text = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![4.0, 40.0],
        ];
        let cf = vec![vec![1.0], vec![-1.0], vec![3.0], vec![0.0]];
        let covered = [true, true, true, false];
        let (f, w) = fuse(&text, &cf, &covered, 0.5, true).unwrap();
        assert!((w - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(f[3][2], 0.0);
        let col = |j: usize, n: usize| -> (f64, f64) {
            let xs: Vec<f64> = f[..n].iter().map(|r| r[j] as f64).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            (
                m,
                xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64,
            )
        };
        for j in 0..2 {
            let (m, v) = col(j, 4);
            assert!(
                m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5,
                "text column {j}: {m} {v}"
            );
        }
        let (m, v) = col(2, 3);
        assert!(
            m.abs() < 1e-6 && (v - 2.0).abs() < 1e-5,
            "collaborative column: {m} {v}"
        );
        // Shares outside [0, 1) are errors.
        assert!(fuse(&text, &cf, &covered, 1.0, true).is_err());
        assert!(fuse(&text, &cf, &[false; 4], 0.5, true).is_err());
    }
}
