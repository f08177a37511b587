//! What the service holds: the catalogue, every user's history, the retrievers,
//! the vector index and the LLM gate. [`AppState::load`] validates everything at
//! startup and fails with a message that names what is wrong.

use std::path::Path;
use std::sync::Arc;

use llmrec_baselines::BaselinesConfig;
use llmrec_core::{Dataset, Error, ItemId, Recommender, Result, SequenceSplit, UserSplit};
use llmrec_llm::{Cache, Llm, read_embeddings};

use crate::config::IndexBackend;
use crate::config::ServeConfig;
use crate::gate::LlmGate;
use crate::index::{ExactIndex, QdrantEdgeIndex, QdrantIndex, VectorIndex};
use crate::metrics::Metrics;

/// One loaded retriever.
pub struct Served {
    /// Name in requests.
    pub name: String,
    /// The checkpoint it came from (`fitted at startup` for baselines).
    pub checkpoint: String,
    /// The model.
    pub model: Box<dyn Recommender>,
}

/// Everything a request reads.
pub struct AppState {
    /// The settings.
    pub cfg: ServeConfig,
    /// The catalogue and histories.
    pub ds: Dataset,
    /// Every user's items in time order, by dense user id.
    pub histories: Vec<Vec<ItemId>>,
    /// Users who had each item, by dense item id.
    pub popularity: Vec<usize>,
    /// Retrievers; the first is the default.
    pub models: Vec<Served>,
    /// Text-embedding neighbours, when embeddings are configured.
    pub index: Option<Box<dyn VectorIndex>>,
    /// The LLM, when one is configured.
    pub gate: Option<LlmGate>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Loads the models and the index for `ds` as `cfg` says; `llm` is the
    /// backend and cache (required when `cfg.llm.backend` is not `none`).
    pub fn load(
        cfg: ServeConfig,
        ds: Dataset,
        llm: Option<(Arc<dyn Llm>, Arc<Cache>)>,
        log: &mut dyn FnMut(&str),
    ) -> Result<AppState> {
        cfg.validate()?;
        let histories = ds.sequences();
        // Baselines are fitted on every interaction: serving has no held-out part.
        let all = SequenceSplit {
            name: "all interactions".into(),
            n_items: ds.n_items(),
            users: histories
                .iter()
                .map(|h| UserSplit {
                    train: h.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        let mut models = Vec::new();
        for (i, m) in cfg.models.iter().enumerate() {
            log(&format!("loading model {}", m.name));
            let model = llmrec_pipelines::registry::build(
                &m.name,
                &BaselinesConfig::default(),
                &ds,
                &all,
                1,
                m.checkpoint.as_deref(),
            )
            .map_err(|e| Error::config(format!("models[{i}]"), e.to_string()))?;
            if model.n_items() != ds.n_items() {
                return Err(Error::config(
                    format!("models[{i}]"),
                    format!(
                        "`{}` scores {} items; {} has {}",
                        m.name,
                        model.n_items(),
                        ds.name,
                        ds.n_items()
                    ),
                ));
            }
            models.push(Served {
                name: m.name.clone(),
                checkpoint: m.checkpoint.as_deref().map_or_else(
                    || "fitted at startup on every interaction".to_string(),
                    |p| p.display().to_string(),
                ),
                model,
            });
        }
        let index = match &cfg.embeddings {
            Some(p) => Some(load_index(&cfg, p, &ds)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let gate = match (cfg.llm.backend, llm) {
            (crate::config::LlmBackendKind::None, _) => None,
            (_, Some((llm, cache))) => Some(LlmGate::new(
                llm,
                cache,
                cfg.llm.workers,
                cfg.llm.queue,
                metrics.clone(),
            )),
            (_, None) => {
                return Err(Error::config(
                    "llm.backend",
                    "an LLM backend is configured but none was given",
                ));
            }
        };
        let mut popularity = vec![0usize; ds.n_items()];
        for h in &histories {
            let mut items = h.clone();
            items.sort_unstable();
            items.dedup();
            for i in items {
                popularity[i as usize] += 1;
            }
        }
        Ok(AppState {
            cfg,
            ds,
            histories,
            popularity,
            models,
            index,
            gate,
            metrics,
        })
    }

    /// The retriever called `name`, or the default.
    pub fn model(&self, name: Option<&str>) -> Option<&Served> {
        match name {
            None => self.models.first(),
            Some(n) => self.models.iter().find(|m| m.name == n),
        }
    }
}

fn load_index(cfg: &ServeConfig, path: &Path, ds: &Dataset) -> Result<Box<dyn VectorIndex>> {
    let t = read_embeddings(path)?;
    if t.len() != ds.n_items() {
        return Err(Error::Artifact {
            path: path.to_path_buf(),
            message: format!(
                "{} embeddings for the {} items of {} (made for another dataset? run `llmrec embed --dataset {}`)",
                t.len(),
                ds.n_items(),
                ds.name,
                ds.name
            ),
        });
    }
    let ix = &cfg.index;
    Ok(match ix.backend {
        IndexBackend::Exact => Box::new(ExactIndex::new(t.data, t.dim)?),
        IndexBackend::QdrantEdge => {
            let dir = ix.path.clone().unwrap_or_else(|| {
                let mut p = path.as_os_str().to_owned();
                p.push(".qdrant-edge");
                p.into()
            });
            Box::new(QdrantEdgeIndex::open_or_build(
                &dir,
                &ds.fingerprint(),
                &t.data,
                t.dim,
            )?)
        }
        IndexBackend::Qdrant => {
            let collection = ix
                .collection
                .clone()
                .unwrap_or_else(|| format!("llmrec-{}", ds.name));
            let key = std::env::var(&ix.api_key_env)
                .ok()
                .filter(|k| !k.is_empty());
            Box::new(QdrantIndex::connect(
                &ix.url,
                &collection,
                key,
                std::time::Duration::from_millis(ix.timeout_ms),
                &t.data,
                t.dim,
            )?)
        }
    })
}
