//! A test server: a synthetic catalogue, EASE and MostPop, item vectors, and a
//! fake LLM, served on a free loopback port; and a small blocking client.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmrec_core::{Error, Result};
use llmrec_llm::{Cache, Generation, Llm, LogProb, Message, SamplingParams};
use llmrec_serve::config::{IndexSettings, LlmBackendKind, ModelEntry};
use llmrec_serve::{AppState, ServeConfig};
use serde_json::Value;

/// A fake LLM: a profile for profile prompts, a ranking that names candidates
/// [2] and [1] then a title that is no candidate, and an explanation otherwise;
/// each call takes `delay`.
pub struct Fake {
    pub delay: Duration,
    pub calls: AtomicUsize,
}

impl Llm for Fake {
    fn backend(&self) -> &str {
        "test"
    }
    fn model(&self) -> &str {
        "fake"
    }
    fn chat(&self, m: &[Message], _p: &SamplingParams) -> Result<Generation> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let last = &m[m.len() - 1].content;
        let text = if last.contains("Candidates:") {
            "[2] whatever\n[1] whatever\nA film nobody offered".to_string()
        } else if last.contains("explain why") {
            "Because it is like the others.".to_string()
        } else {
            "likes: block items".to_string()
        };
        Ok(Generation {
            text,
            prompt_tokens: 30,
            completion_tokens: 5,
            latency_ms: 0.0,
            finish: llmrec_llm::FinishReason::Stop,
        })
    }
    fn score_continuations(&self, _m: &[Message], _c: &[String]) -> Result<Vec<LogProb>> {
        Err(Error::Invalid("not used".into()))
    }
    fn generate_constrained(&self, _m: &[Message], _a: &[String]) -> Result<String> {
        Err(Error::Invalid("not used".into()))
    }
}

pub struct Server {
    pub base: String,
    pub rt: tokio::runtime::Runtime,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub dir: tempfile::TempDir,
    pub llm: Arc<Fake>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn start(delay: Duration, queue: usize) -> Server {
    start_with_index(delay, queue, IndexSettings::default())
}

/// [`start`] with the item vectors searched by `index`.
pub fn start_with_index(delay: Duration, queue: usize, index: IndexSettings) -> Server {
    let ds = llmrec_data::synthetic::two_blocks(20, 12, 5, 3);
    let dir = tempfile::tempdir().unwrap();
    // Item vectors: the first 6 items point one way, the rest the other.
    let emb = dir.path().join("items.emb");
    let texts: Vec<String> = (0..12).map(|i| format!("item {i}")).collect();
    let rows: Vec<Vec<f32>> = (0..12)
        .map(|i| {
            let b = if i < 6 { 1.0 } else { -1.0 };
            vec![b, 0.1 * i as f32, 0.5]
        })
        .collect();
    llmrec_llm::write_embeddings(&emb, "test", &texts, &rows).unwrap();
    let cfg = ServeConfig {
        dataset: ds.name.clone(),
        models: vec![
            ModelEntry {
                name: "ease".into(),
                checkpoint: None,
            },
            ModelEntry {
                name: "mostpop".into(),
                checkpoint: None,
            },
        ],
        max_k: 20,
        max_body_bytes: 4096,
        embeddings: Some(emb),
        index,
        llm: llmrec_serve::config::LlmSettings {
            backend: LlmBackendKind::Local,
            workers: 1,
            queue,
            ..Default::default()
        },
        ..ServeConfig::default()
    };
    let llm = Arc::new(Fake {
        delay,
        calls: AtomicUsize::new(0),
    });
    let cache = Arc::new(Cache::open(dir.path().join("c.redb")).unwrap());
    let state = AppState::load(
        cfg,
        ds,
        Some((llm.clone() as Arc<dyn Llm>, cache)),
        &mut |_| {},
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(llmrec_serve::serve(listener, Arc::new(state), async {
        let _ = rx.await;
    }));
    Server {
        base,
        rt,
        stop: Some(tx),
        dir,
        llm,
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub fn get(s: &Server, path: &str) -> (u16, String) {
    let mut r = agent().get(&format!("{}{path}", s.base)).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let mut r = agent()
        .post(&format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
