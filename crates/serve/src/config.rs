//! `serve.toml`: what the service loads and its limits (every key documented with
//! its default in `configs/serve.toml`).

use std::path::PathBuf;

use llmrec_core::check::all_positive;
use llmrec_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Settings of `llmrec serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub bind: String,
    /// Registered dataset whose catalogue and histories are served.
    pub dataset: String,
    /// Retrievers, by name; the first is the default.
    pub models: Vec<ModelEntry>,
    /// Largest `k` a request may ask for. Default 100.
    pub max_k: usize,
    /// Largest request body in bytes. Default 65536.
    pub max_body_bytes: usize,
    /// Per-request time limit in milliseconds (the reply is a 503 past it).
    /// Default 30000.
    pub request_timeout_ms: u64,
    /// Item text embeddings for `/v1/items/{id}/similar` (an artifact of
    /// `llmrec embed`); empty: the route answers 404.
    pub embeddings: Option<PathBuf>,
    /// Where the embeddings are searched.
    pub index: IndexSettings,
    /// The LLM behind reranking and explanations.
    pub llm: LlmSettings,
    /// PALR reranking.
    pub palr: RerankSettings,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: "127.0.0.1:8080".into(),
            dataset: "ml-1m-sas".into(),
            models: vec![ModelEntry {
                name: "ease".into(),
                checkpoint: None,
            }],
            max_k: 100,
            max_body_bytes: 65536,
            request_timeout_ms: 30_000,
            embeddings: None,
            index: IndexSettings::default(),
            llm: LlmSettings::default(),
            palr: RerankSettings::default(),
        }
    }
}

/// One retriever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A baseline (`mostpop`, `itemknn`, `bpr`, `ease`: fitted at startup on every
    /// interaction of the dataset) or `sasrec` / `tiger` (from `checkpoint`).
    pub name: String,
    /// Checkpoint folder (`RUN/best`) of a trained model.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
}

/// Which vector index answers `/v1/items/{id}/similar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexBackend {
    /// Every item scored in memory.
    Exact,
    /// An embedded Qdrant shard in the folder `path`.
    QdrantEdge,
    /// A Qdrant server or cluster at `url`.
    Qdrant,
}

/// The vector index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSettings {
    /// Backend. Default `exact`.
    pub backend: IndexBackend,
    /// `qdrant-edge`: the shard folder (default: the embeddings file's path with
    /// `.qdrant-edge` appended). Built at startup when missing or stale.
    pub path: Option<PathBuf>,
    /// `qdrant`: the server's REST address. Default `http://127.0.0.1:6333`.
    pub url: String,
    /// `qdrant`: the collection (default: `llmrec-<dataset>`), created and filled
    /// when missing.
    pub collection: Option<String>,
    /// `qdrant`: environment variable holding the API key. Default `QDRANT_API_KEY`.
    pub api_key_env: String,
    /// `qdrant`: time limit of one request in milliseconds. Default 5000.
    pub timeout_ms: u64,
}

impl Default for IndexSettings {
    fn default() -> Self {
        IndexSettings {
            backend: IndexBackend::Exact,
            path: None,
            url: "http://127.0.0.1:6333".into(),
            collection: None,
            api_key_env: "QDRANT_API_KEY".into(),
            timeout_ms: 5000,
        }
    }
}

/// Which LLM backend serves reranking and explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackendKind {
    /// No LLM: `rerank: palr`, `/v1/rerank` and `/v1/explain` answer 409.
    None,
    /// The local GGUF model (SmolLM2 by default, or `model_path`).
    Local,
    /// An OpenAI-compatible server at `base_url`.
    Openai,
}

/// The LLM backend, its cache and its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// Backend. Default `none`.
    pub backend: LlmBackendKind,
    /// Local backend: the GGUF file (default: SmolLM2 as `llmrec models` resolves it).
    pub model_path: Option<PathBuf>,
    /// Server backend: base URL (`http://HOST:PORT/v1`).
    pub base_url: Option<String>,
    /// Server backend: model name.
    pub model: Option<String>,
    /// Server backend: environment variable holding the API key.
    pub api_key_env: String,
    /// The persistent cache of every LLM answer (default: the CLI's cache path).
    pub cache: Option<PathBuf>,
    /// LLM calls run at once. Default 1.
    pub workers: usize,
    /// Requests that may wait for a worker; beyond them, 503 at once. Default 8.
    pub queue: usize,
    /// Token budget of an explanation. Default 64.
    pub explain_max_tokens: usize,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            backend: LlmBackendKind::None,
            model_path: None,
            base_url: None,
            model: None,
            api_key_env: "OPENAI_API_KEY".into(),
            cache: None,
            workers: 1,
            queue: 8,
            explain_max_tokens: 64,
        }
    }
}

/// PALR reranking settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RerankSettings {
    /// Retriever candidates the LLM reranks. Default 20.
    pub candidates: usize,
    /// Most recent history items in the prompts. Default 20.
    pub history_items: usize,
    /// Token budget of the profile. Default 64.
    pub profile_max_tokens: usize,
    /// Token budget of the ranking answer. Default 160.
    pub rank_max_tokens: usize,
}

impl Default for RerankSettings {
    fn default() -> Self {
        RerankSettings {
            candidates: 20,
            history_items: 20,
            profile_max_tokens: 64,
            rank_max_tokens: 160,
        }
    }
}

impl ServeConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() {
            return Err(Error::config("models", "configure at least one model"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|x| x.name == m.name) {
                return Err(Error::config(
                    format!("models[{i}].name"),
                    format!("`{}` is configured twice", m.name),
                ));
            }
        }
        all_positive([
            ("max_k", self.max_k),
            ("max_body_bytes", self.max_body_bytes),
            ("request_timeout_ms", self.request_timeout_ms as usize),
            ("index.timeout_ms", self.index.timeout_ms as usize),
            ("llm.workers", self.llm.workers),
            ("llm.explain_max_tokens", self.llm.explain_max_tokens),
            ("palr.candidates", self.palr.candidates),
            ("palr.history_items", self.palr.history_items),
            ("palr.profile_max_tokens", self.palr.profile_max_tokens),
            ("palr.rank_max_tokens", self.palr.rank_max_tokens),
        ])
    }
}
