//! Set-up shared by the commands: loading datasets, default paths, LLM backends.
//! Commands call these instead of each other.

use std::path::PathBuf;

use llmrec_core::{Dataset, Error, Result};
use llmrec_llm::{Llm, LocalConfig, LocalLlm, OpenAiConfig, OpenAiLlm};

use crate::args::{BackendArg, BackendArgs};
use crate::config::DatasetConfig;
use crate::progress;

/// Loads and preprocesses the configured dataset.
pub fn load_dataset(cfg: &DatasetConfig) -> Result<Dataset> {
    let sp = progress::spinner(&format!("loading {}", cfg.name));
    let ds = match &cfg.generic {
        Some(g) => g.load(&cfg.name)?,
        None => llmrec_data::load(&cfg.name)?,
    };
    let ds = llmrec_data::preprocess::preprocess(&ds, &cfg.preprocess)?;
    sp.finish_and_clear();
    Ok(ds)
}

/// Loads the registered dataset `name` with its default settings.
pub fn dataset_named(name: &str) -> Result<Dataset> {
    load_dataset(&DatasetConfig {
        name: name.to_string(),
        ..Default::default()
    })
}

/// The MovieLens 1M folder: `--ml1m-dir`, else `$LLMREC_DATA_DIR/ml-1m`.
pub fn ml1m_dir(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.clone());
    }
    llmrec_data::registry::Locations::from_env()
        .data_dir
        .map(|d| d.join("ml-1m"))
        .ok_or_else(|| {
            Error::config(
                "--ml1m-dir",
                "set LLMREC_DATA_DIR to the folder holding ml-1m/ (derived/ratings_ordered.tsv, \
                 users.dat, movies.dat), or pass --ml1m-dir",
            )
        })
}

/// The settings and run folder of a command that can go on in an earlier run
/// folder: with `resume`, that folder and its `config.toml` with `overrides` on
/// top; else a new folder `<out>/<kind>-<dataset>-<time>` and `config` (or the
/// defaults) with `overrides`. The resolved settings are written to the folder's
/// `config.toml`.
pub fn run_settings<T: serde::Serialize + serde::de::DeserializeOwned>(
    resume: Option<&PathBuf>,
    config: Option<&std::path::Path>,
    overrides: &[String],
    (out, kind, dataset): (&std::path::Path, &str, &str),
) -> Result<(T, PathBuf)> {
    let (cfg, dir) = match resume {
        Some(dir) => {
            let path = dir.join("config.toml");
            if !path.exists() {
                return Err(Error::config(
                    "--resume",
                    format!(
                        "{} has no config.toml: not a {kind} run folder",
                        dir.display()
                    ),
                ));
            }
            (
                crate::config::load_toml(Some(&path), overrides)?,
                dir.clone(),
            )
        }
        None => (
            crate::config::load_toml(config, overrides)?,
            crate::output::run_dir(out, kind, dataset)?,
        ),
    };
    let text = toml::to_string_pretty(&cfg).map_err(|e| Error::config("(all)", e.to_string()))?;
    crate::output::write_atomic(&dir.join("config.toml"), text.as_bytes())?;
    Ok((cfg, dir))
}

/// Default persistent cache: `$LLMREC_CACHE_DIR/cache.redb`, else `~/.cache/llmrec/cache.redb`.
pub fn default_cache_path() -> PathBuf {
    if let Some(d) = std::env::var_os("LLMREC_CACHE_DIR") {
        return PathBuf::from(d).join("cache.redb");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/llmrec/cache.redb")
}

/// Default artifact path of a dataset's item embeddings.
pub fn default_embeddings_path(dataset: &str) -> PathBuf {
    PathBuf::from("artifacts")
        .join(dataset)
        .join("items.all-MiniLM-L6-v2.emb")
}

/// all-MiniLM-L6-v2 from `path`, or resolved as `llmrec models` says, behind a
/// spinner.
pub fn minilm(path: Option<&std::path::Path>) -> Result<llmrec_llm::Embedder> {
    let sp = progress::spinner("loading all-MiniLM-L6-v2");
    let embedder = llmrec_llm::Embedder::minilm(path);
    sp.finish_and_clear();
    embedder
}

/// The LLM backend the flags select: the local GGUF model (SmolLM2 by default, or
/// `--model-path`) or an OpenAI-compatible server.
pub fn llm_backend(a: &BackendArgs, local: LocalConfig) -> Result<Box<dyn Llm>> {
    Ok(match a.backend {
        BackendArg::Local => Box::new(LocalLlm::smollm2(
            a.model_path.as_deref(),
            LocalConfig {
                adapter: a.adapter.clone(),
                ..local
            },
        )?),
        BackendArg::Openai => {
            if a.adapter.is_some() {
                return Err(Error::config(
                    "--adapter",
                    "adapters merge into the local model; for a server, serve the merged model (`llmrec lm export`)",
                ));
            }
            let base_url = a.base_url.clone().ok_or_else(|| {
                Error::config(
                    "--base-url",
                    "the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)",
                )
            })?;
            let model = a.model.clone().ok_or_else(|| {
                Error::config(
                    "--model",
                    "the openai backend needs --model (the server's model name)",
                )
            })?;
            Box::new(OpenAiLlm::new(OpenAiConfig {
                base_url,
                model,
                api_key_env: Some(a.api_key_env.clone()),
                ..Default::default()
            })?)
        }
    })
}
