//! `llmrec serve`: loads the dataset, the retrievers, the LLM and its cache as
//! `serve.toml` says, checks them (an unreachable LLM server stops startup), and
//! serves until SIGTERM or Ctrl-C, letting requests in flight finish.

use std::sync::Arc;

use llmrec_core::{Error, Result};
use llmrec_llm::{
    Cache, Llm, LocalConfig, LocalLlm, Message, OpenAiConfig, OpenAiLlm, SamplingParams,
};
use llmrec_serve::config::LlmBackendKind;
use llmrec_serve::{AppState, ServeConfig};

use crate::args::ServeArgs;
use crate::config::load_toml;
use crate::progress;

/// Runs `llmrec serve`.
pub fn run(a: &ServeArgs) -> Result<()> {
    let cfg: ServeConfig = load_toml(a.config.as_deref(), &a.set)?;
    cfg.validate()?;
    let ds = crate::setup::dataset_named(&cfg.dataset)?;
    let llm = match cfg.llm.backend {
        LlmBackendKind::None => None,
        kind => {
            let sp = progress::spinner("loading the LLM");
            let llm: Arc<dyn Llm> = match kind {
                LlmBackendKind::Openai => {
                    let base_url = cfg.llm.base_url.clone().ok_or_else(|| {
                        Error::config("llm.base_url", "the openai backend needs a base URL")
                    })?;
                    let model = cfg.llm.model.clone().ok_or_else(|| {
                        Error::config("llm.model", "the openai backend needs a model name")
                    })?;
                    Arc::new(OpenAiLlm::new(OpenAiConfig {
                        base_url,
                        model,
                        api_key_env: Some(cfg.llm.api_key_env.clone()),
                        ..Default::default()
                    })?)
                }
                _ => Arc::new(LocalLlm::smollm2(
                    cfg.llm.model_path.as_deref(),
                    LocalConfig::default(),
                )?),
            };
            // One token, so that an unreachable server or a broken model stops
            // startup rather than the first request.
            llm.chat(&[Message::user("ping")], &SamplingParams::greedy(1))
                .map_err(|e| Error::config("llm", format!("the LLM does not answer: {e}")))?;
            sp.finish_and_clear();
            let cache = Cache::open(
                cfg.llm
                    .cache
                    .clone()
                    .unwrap_or_else(crate::setup::default_cache_path),
            )?;
            Some((llm, Arc::new(cache)))
        }
    };
    let bind = cfg.bind.clone();
    let state = AppState::load(cfg, ds, llm, &mut |l| eprintln!("{l}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| Error::config("bind", format!("cannot listen on {bind}: {e}")))?;
        eprintln!(
            "serving {} on http://{} (demo page at /, API under /v1, /openapi.json)",
            state.ds.name,
            listener
                .local_addr()
                .map_or(bind.clone(), |a| a.to_string())
        );
        llmrec_serve::serve(listener, Arc::new(state), llmrec_serve::shutdown_signal()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("serve.toml");
        let cfg: ServeConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, ServeConfig::default());
        assert!(load_toml::<ServeConfig>(Some(&p), &["max_kk=1".into()]).is_err());
        let bad: ServeConfig = load_toml(Some(&p), &["llm.workers=0".into()]).unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("llm.workers"), "{err}");
    }
}
