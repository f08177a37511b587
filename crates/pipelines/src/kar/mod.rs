//! KAR (Knowledge Augmented Recommendation, arXiv 2306.10933): an LLM's reasoning
//! about each user's preferences and facts about each item, along a fixed set of
//! scenario factors, encoded by MiniLM, mapped by a hybrid-expert adaptor into the
//! recommender's space and fed to CTR models as extra fields.
//!
//! - [`protocol`]: the split (prompt-only first ratings, CTR samples after them,
//!   users split 80/10/10, seeded);
//! - [`prompts`]: the factorized user and item prompts;
//! - [`knowledge`]: generation through the batch runner into a versioned artifact;
//! - [`vectors`]: knowledge vectors and the controls (shuffled; item text and user
//!   history without the LLM);
//! - [`train`]: one CTR model through the shared learner, and its metrics.
//!
//! Every choice (the pass, through early stopping) is made on validation users;
//! test users are scored once, for the kept weights. The official code selects on
//! the test set; this module does not.

pub mod knowledge;
pub mod prompts;
pub mod protocol;
pub mod train;
pub mod vectors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmrec_core::check::all_positive;
use llmrec_core::io::write_json;
use llmrec_core::metrics::mean_std;
use llmrec_core::{Error, Result};
use llmrec_data::loaders::ExplicitRatings;
use llmrec_llm::Embedder;
use llmrec_models::TrainEvent;
use llmrec_models::ctr::{AdaptorConfig, Backbone, CtrConfig};
use serde::{Deserialize, Serialize};

use knowledge::KnowledgeConfig;
use protocol::{KarData, ProtocolConfig};
use train::{Catalog, CtrMetrics, CtrRun, TrainConfig, TrainedCtr, train_one};
use vectors::{Knowledge, Side, Tower};

/// Settings of `llmrec kar` (documented in `configs/kar.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KarConfig {
    /// The split.
    pub protocol: ProtocolConfig,
    /// Knowledge generation.
    pub knowledge: KnowledgeConfig,
    /// The CTR models.
    pub model: ModelConfig,
    /// Their training.
    pub train: TrainConfig,
    /// What `kar eval` runs.
    pub eval: EvalConfig,
}

/// Sizes of the CTR models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Width of every field. Default 32.
    pub emb: usize,
    /// Hidden widths of the final MLP. Default [200, 80].
    pub mlp: Vec<usize>,
    /// DCNv2's cross layers. Default 3.
    pub cross_layers: usize,
    /// DIN's attention unit width. Default 80.
    pub attention_hidden: usize,
    /// The hybrid-expert adaptor.
    pub adaptor: AdaptorConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            emb: 32,
            mlp: vec![200, 80],
            cross_layers: 3,
            attention_hidden: 80,
            adaptor: AdaptorConfig::default(),
        }
    }
}

/// What `kar eval` trains: every backbone × knowledge × seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Backbones. Default all three.
    pub backbones: Vec<Backbone>,
    /// Knowledge kinds. Default all seven (four need the LLM artifact).
    pub knowledge: Vec<Knowledge>,
    /// Seeds of the weights and sample order. Default [1, 2, 3].
    pub seeds: Vec<u64>,
    /// Seed of the shuffled-knowledge control. Default 7.
    pub shuffle_seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            backbones: Backbone::ALL.to_vec(),
            knowledge: Knowledge::ALL.to_vec(),
            seeds: vec![1, 2, 3],
            shuffle_seed: 7,
        }
    }
}

impl KarConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.protocol.validate()?;
        let m = &self.model;
        all_positive([
            ("model.emb", m.emb),
            ("model.attention_hidden", m.attention_hidden),
            ("model.adaptor.hidden", m.adaptor.hidden),
            (
                "model.adaptor.shared + dedicated",
                m.adaptor.shared + m.adaptor.dedicated,
            ),
        ])?;
        if m.mlp.contains(&0) {
            return Err(Error::config("model.mlp", "every width must be positive"));
        }
        self.train.validate()?;
        if self.eval.backbones.is_empty()
            || self.eval.knowledge.is_empty()
            || self.eval.seeds.is_empty()
        {
            return Err(Error::config(
                "eval.backbones/knowledge/seeds",
                "each needs at least one entry",
            ));
        }
        Ok(())
    }

    fn ctr(&self, backbone: Backbone, catalog: &Catalog) -> CtrConfig {
        CtrConfig {
            backbone,
            items: catalog.items(),
            genres: catalog.genres.len().max(1),
            ratings: 5,
            emb: self.model.emb,
            mlp: self.model.mlp.clone(),
            cross_layers: self.model.cross_layers,
            attention_hidden: self.model.attention_hidden,
            adaptor: self.model.adaptor,
        }
    }
}

/// Sizes of the protocol's data, for reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSummary {
    /// Users in training, validation and test.
    pub users: [usize; 3],
    /// Samples in training, validation and test.
    pub samples: [usize; 3],
    /// Ratings that feed only prompts.
    pub prompt_ratings: usize,
    /// Share of positive samples.
    pub positive_share: f64,
}

impl DataSummary {
    /// Of `kar`.
    pub fn of(kar: &KarData) -> DataSummary {
        DataSummary {
            users: [
                kar.train.users.len(),
                kar.valid.users.len(),
                kar.test.users.len(),
            ],
            samples: [
                kar.train.samples.len(),
                kar.valid.samples.len(),
                kar.test.samples.len(),
            ],
            prompt_ratings: kar.prompt.values().map(Vec::len).sum(),
            positive_share: kar.positive_share(),
        }
    }
}

/// One trained model of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRun {
    /// Backbone.
    pub backbone: Backbone,
    /// Knowledge given.
    pub knowledge: Knowledge,
    /// Seed.
    pub seed: u64,
    /// Training and scores.
    pub result: TrainedCtr,
    /// Its run folder.
    pub run_dir: PathBuf,
}

/// Mean and standard deviation over seeds of one backbone × knowledge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    /// Backbone.
    pub backbone: Backbone,
    /// Knowledge given.
    pub knowledge: Knowledge,
    /// Seeds run.
    pub seeds: usize,
    /// Mean test metrics.
    pub mean: CtrMetrics,
    /// Their sample standard deviations (0 with one seed).
    pub std: CtrMetrics,
    /// Relative AUC change over the same backbone without knowledge, in percent.
    pub auc_lift_pct: Option<f64>,
    /// Mean training seconds per model.
    pub train_seconds: f64,
}

/// What `kar eval` writes to `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The protocol in words.
    pub protocol: String,
    /// Data sizes.
    pub data: DataSummary,
    /// The knowledge artifact used, if any.
    pub knowledge_dir: Option<PathBuf>,
    /// Every model.
    pub runs: Vec<EvalRun>,
    /// Aggregated rows.
    pub rows: Vec<EvalRow>,
}

/// The protocol's one-line description.
pub fn protocol_words(cfg: &ProtocolConfig) -> String {
    format!(
        "ml-1m CTR (4+ stars = click): per user the first min(ceil(n/2), {}) ratings feed only \
         the prompt, later ones are samples; users split {:.0}/{:.0}/{:.0} (seed {}); pass chosen \
         on validation AUC, test read once",
        cfg.prompt_max,
        cfg.train_share * 100.0,
        cfg.valid_share * 100.0,
        (1.0 - cfg.train_share - cfg.valid_share) * 100.0,
        cfg.split_seed
    )
}

/// Where `kar eval` reads knowledge and keeps encodings.
pub struct EvalInputs<'a> {
    /// The MiniLM embedder.
    pub embedder: &'a Embedder,
    /// The LLM knowledge artifact (needed by user, item, both, shuffled).
    pub knowledge_dir: Option<&'a Path>,
    /// Where the item-text encodings are kept.
    pub cache_dir: &'a Path,
}

/// Trains every backbone × knowledge × seed of `cfg.eval` into `out` and reports
/// them. A model whose `result.json` is already in its folder is not trained again,
/// so a cut-off run resumes model by model.
pub fn run_eval(
    data: &ExplicitRatings,
    cfg: &KarConfig,
    inputs: &EvalInputs<'_>,
    out: &Path,
    log: &mut dyn FnMut(&str),
    event: &mut dyn FnMut(&str, &TrainEvent),
) -> Result<EvalReport> {
    cfg.validate()?;
    let kar = protocol::build(data, &cfg.protocol)?;
    let summary = DataSummary::of(&kar);
    log(&format!(
        "{} users / {} samples (train, valid, test): {:?} / {:?}; {:.1}% positive",
        summary.users.iter().sum::<usize>(),
        summary.samples.iter().sum::<usize>(),
        summary.users,
        summary.samples,
        100.0 * summary.positive_share
    ));
    let catalog = Catalog::new(&data.movies, data.histories.keys().copied());
    let quiet = |_: usize, _: usize| {};
    let wanted = &cfg.eval.knowledge;
    let llm = if wanted.iter().any(Knowledge::needs_llm) {
        let dir = inputs.knowledge_dir.ok_or_else(|| {
            Error::config(
                "--knowledge-dir",
                "knowledge user, item, both and shuffled need an artifact of `llmrec kar knowledge`",
            )
        })?;
        knowledge::read_manifest(dir)?;
        log(&format!("encoding the LLM knowledge of {}", dir.display()));
        Some(vectors::llm_vectors(inputs.embedder, dir, &quiet)?)
    } else {
        None
    };
    let item_text = if wanted
        .iter()
        .any(|k| matches!(k, Knowledge::ItemText | Knowledge::UserHistory))
    {
        log("encoding the movies' titles and genres");
        Some(vectors::item_text_vectors(
            inputs.embedder,
            &data.movies,
            &inputs.cache_dir.join("ml-1m-item-text.minilm.emb"),
            &quiet,
        )?)
    } else {
        None
    };
    let towers = |k: Knowledge| -> Result<Vec<Tower>> {
        // The LLM's vectors of one side; an artifact without that side is an error.
        let llm_side = |side: Side| -> Result<&HashMap<u32, Vec<f32>>> {
            let (users, items) = llm
                .as_ref()
                .ok_or_else(|| Error::Invalid("LLM knowledge was not loaded".into()))?;
            let (map, file) = match side {
                Side::User => (users, "users.jsonl"),
                Side::Item => (items, "items.jsonl"),
            };
            if map.is_empty() {
                return Err(Error::config(
                    "eval.knowledge",
                    format!(
                        "knowledge {} needs the artifact's {file}, which holds no records \
                         (generate them with `llmrec kar knowledge`)",
                        k.name()
                    ),
                ));
            }
            Ok(map)
        };
        let tower = |side, vectors: HashMap<u32, Vec<f32>>| Tower { side, vectors };
        let item_text = || {
            item_text
                .as_ref()
                .ok_or_else(|| Error::Invalid("item texts were not encoded".into()))
        };
        Ok(match k {
            Knowledge::None => Vec::new(),
            Knowledge::User => vec![tower(Side::User, llm_side(Side::User)?.clone())],
            Knowledge::Item => vec![tower(Side::Item, llm_side(Side::Item)?.clone())],
            Knowledge::Both => vec![
                tower(Side::User, llm_side(Side::User)?.clone()),
                tower(Side::Item, llm_side(Side::Item)?.clone()),
            ],
            // Every side the artifact holds, each vector moved to another id.
            Knowledge::Shuffled => {
                let (users, items) = llm
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("LLM knowledge was not loaded".into()))?;
                let seed = cfg.eval.shuffle_seed;
                [(Side::User, users, seed), (Side::Item, items, seed + 1)]
                    .into_iter()
                    .filter(|(_, m, _)| !m.is_empty())
                    .map(|(side, m, s)| tower(side, vectors::shuffled(m, s)))
                    .collect()
            }
            Knowledge::ItemText => vec![tower(Side::Item, item_text()?.clone())],
            Knowledge::UserHistory => vec![tower(
                Side::User,
                vectors::user_history_vectors(&kar.prompt, item_text()?),
            )],
        })
    };
    let mut runs = Vec::new();
    for &backbone in &cfg.eval.backbones {
        let model = cfg.ctr(backbone, &catalog);
        for &k in wanted {
            let tables = catalog.tables(&towers(k)?)?;
            for &seed in &cfg.eval.seeds {
                let name = format!("{}-{}-seed{seed}", backbone.name(), k.name());
                let run_dir = out.join(&name);
                let done = run_dir.join("result.json");
                let result: TrainedCtr = match std::fs::read_to_string(&done)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                {
                    Some(r) => {
                        log(&format!("{name}: already trained, result read"));
                        r
                    }
                    None => {
                        let run = CtrRun {
                            model: &model,
                            train: &cfg.train,
                            catalog: &catalog,
                            tables: &tables,
                            knowledge: k.name(),
                            seed,
                        };
                        let r = train_one(
                            &run,
                            &kar.train.samples,
                            &kar.valid.samples,
                            &kar.test.samples,
                            &run_dir,
                            &mut |e| event(&name, e),
                        )?;
                        write_json(&done, &r)?;
                        r
                    }
                };
                log(&format!(
                    "{name}: best pass {} of {}, valid AUC {:.4}, test AUC {:.4} LogLoss {:.4} GAUC {:.4}",
                    result.best_epoch,
                    result.epochs_run,
                    result.valid.auc,
                    result.test.auc,
                    result.test.logloss,
                    result.test.gauc
                ));
                runs.push(EvalRun {
                    backbone,
                    knowledge: k,
                    seed,
                    result,
                    run_dir,
                });
            }
        }
    }
    let rows = aggregate(&runs);
    Ok(EvalReport {
        protocol: protocol_words(&cfg.protocol),
        data: summary,
        knowledge_dir: inputs.knowledge_dir.map(Path::to_path_buf),
        runs,
        rows,
    })
}

/// Mean and standard deviation per backbone × knowledge, with the AUC lift over
/// the same backbone without knowledge.
pub fn aggregate(runs: &[EvalRun]) -> Vec<EvalRow> {
    let mut keys: Vec<(Backbone, Knowledge)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.backbone, r.knowledge)) {
            keys.push((r.backbone, r.knowledge));
        }
    }
    let mut rows: Vec<EvalRow> = keys
        .iter()
        .map(|&(b, k)| {
            let rs: Vec<&EvalRun> = runs
                .iter()
                .filter(|r| r.backbone == b && r.knowledge == k)
                .collect();
            let stat = |f: &dyn Fn(&CtrMetrics) -> f64| {
                mean_std(&rs.iter().map(|r| f(&r.result.test)).collect::<Vec<_>>())
            };
            let (auc, auc_s) = stat(&|m| m.auc);
            let (ll, ll_s) = stat(&|m| m.logloss);
            let (g, g_s) = stat(&|m| m.gauc);
            EvalRow {
                backbone: b,
                knowledge: k,
                seeds: rs.len(),
                mean: CtrMetrics {
                    auc,
                    logloss: ll,
                    gauc: g,
                },
                std: CtrMetrics {
                    auc: auc_s,
                    logloss: ll_s,
                    gauc: g_s,
                },
                auc_lift_pct: None,
                train_seconds: rs.iter().map(|r| r.result.train_seconds).sum::<f64>()
                    / rs.len() as f64,
            }
        })
        .collect();
    let base: HashMap<Backbone, f64> = rows
        .iter()
        .filter(|r| r.knowledge == Knowledge::None)
        .map(|r| (r.backbone, r.mean.auc))
        .collect();
    for r in &mut rows {
        r.auc_lift_pct = base.get(&r.backbone).map(|b| 100.0 * (r.mean.auc - b) / b);
    }
    rows
}
