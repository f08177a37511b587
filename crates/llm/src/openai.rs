//! The OpenAI-compatible HTTP backend (vLLM, TGI, llama.cpp server, Ollama, OpenAI).
//!
//! - `chat` uses `POST {base}/chat/completions`;
//! - `score_continuations` uses `POST {base}/completions` with `echo` and
//!   `logprobs` (servers that offer them: vLLM, llama.cpp), on the prompt
//!   rendered with ChatML (override with [`OpenAiConfig::completion_template`]);
//! - `generate_constrained` scores every allowed string and returns the most
//!   likely one, so the answer is always allowed.
//!
//! Retries: 429, 5xx, timeouts, connection failures and truncated bodies are
//! retried with exponential backoff and full jitter, honouring `Retry-After`
//! (seconds). Other statuses and malformed JSON fail at once with an error
//! that quotes the server. At most `concurrency` requests are in flight per
//! backend across threads. The API key is read from an environment variable
//! and never appears in errors or `Debug` output.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use llmrec_core::parallel::parallel_map;
use llmrec_core::{Error, Result, Rng};
use serde_json::{Value, json};

use crate::llm::{FinishReason, Generation, Llm, LogProb, Message, SamplingParams};

/// Settings of an OpenAI-compatible backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL including `/v1` (`http://127.0.0.1:8000/v1`); a URL without
    /// `/v1` gets it appended.
    pub base_url: String,
    /// Model name sent to the server.
    pub model: String,
    /// Environment variable holding the API key (`OPENAI_API_KEY`); none sends no key.
    pub api_key_env: Option<String>,
    /// Timeout of one request (connect, send, whole response).
    pub timeout: Duration,
    /// Retries after the first try.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry.
    pub backoff_base: Duration,
    /// Largest backoff delay (also caps `Retry-After`).
    pub backoff_max: Duration,
    /// Requests in flight at most (across threads).
    pub concurrency: usize,
    /// Prompt rendering for `/completions` scoring: `{role}` and `{content}`
    /// per message, `{assistant}` as the generation prompt. Default ChatML.
    pub completion_template: CompletionTemplate,
}

/// How chat messages become a plain prompt for `/completions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionTemplate {
    /// Per message, with `{role}` and `{content}` substituted.
    pub message: String,
    /// Appended after the messages (the assistant's turn header).
    pub generation_prompt: String,
}

impl Default for CompletionTemplate {
    fn default() -> Self {
        CompletionTemplate {
            message: "<|im_start|>{role}\n{content}<|im_end|>\n".into(),
            generation_prompt: "<|im_start|>assistant\n".into(),
        }
    }
}

impl CompletionTemplate {
    /// Renders `messages` and the generation prompt.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut s = String::new();
        for m in messages {
            s.push_str(
                &self
                    .message
                    .replace("{role}", m.role.as_str())
                    .replace("{content}", &m.content),
            );
        }
        s.push_str(&self.generation_prompt);
        s
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            timeout: Duration::from_secs(120),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            concurrency: 8,
            completion_template: CompletionTemplate::default(),
        }
    }
}

/// A counting semaphore.
#[derive(Debug)]
struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn acquire(&self) -> Permit<'_> {
        let mut n = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *n == 0 {
            n = self.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut n = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.0.cv.notify_one();
    }
}

/// An OpenAI-compatible chat backend.
pub struct OpenAiLlm {
    cfg: OpenAiConfig,
    agent: ureq::Agent,
    api_key: Option<String>,
    sem: Semaphore,
    jitter: Mutex<Rng>,
}

impl std::fmt::Debug for OpenAiLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiLlm")
            .field("base_url", &self.cfg.base_url)
            .field("model", &self.cfg.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One failed try: whether to retry, the message, and a server-requested delay.
struct Failure {
    retry: bool,
    message: String,
    retry_after: Option<Duration>,
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The server's own message from an error body (`{"error":{"message":..}}`), or the body.
fn server_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
        })
        .unwrap_or_else(|| excerpt(body))
}

impl OpenAiLlm {
    /// A backend with `cfg`; the API key is read now from `cfg.api_key_env`.
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        if !(cfg.base_url.starts_with("http://") || cfg.base_url.starts_with("https://")) {
            return Err(Error::config(
                "llm.openai.base_url",
                format!("`{}` is not an http(s) URL", cfg.base_url),
            ));
        }
        let api_key = cfg
            .api_key_env
            .as_deref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|k| !k.is_empty());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(OpenAiLlm {
            sem: Semaphore {
                free: Mutex::new(cfg.concurrency.max(1)),
                cv: Condvar::new(),
            },
            cfg,
            agent,
            api_key,
            jitter: Mutex::new(Rng::new(seed)),
        })
    }

    fn url(&self, endpoint: &str) -> String {
        let base = self.cfg.base_url.trim_end_matches('/');
        if base.ends_with("/v1") {
            format!("{base}/{endpoint}")
        } else {
            format!("{base}/v1/{endpoint}")
        }
    }

    fn try_once(&self, url: &str, body: &str) -> std::result::Result<Value, Failure> {
        let _permit = self.sem.acquire();
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let transport = |e: ureq::Error| Failure {
            retry: true,
            message: match e {
                ureq::Error::Timeout(t) => {
                    format!("timed out after {:?} ({t})", self.cfg.timeout)
                }
                ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    format!("truncated response: {io}")
                }
                other => other.to_string(),
            },
            retry_after: None,
        };
        let mut resp = req.send(body).map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = resp.body_mut().read_to_string().map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(Failure {
                retry: status == 429 || status >= 500,
                message: format!("HTTP {status}: {}", server_message(&text)),
                retry_after,
            });
        }
        serde_json::from_str(&text).map_err(|e| Failure {
            retry: false,
            message: format!("malformed JSON in response ({e}): {}", excerpt(&text)),
            retry_after: None,
        })
    }

    /// POSTs `body` to `endpoint` with retries; returns the parsed JSON.
    fn post(&self, endpoint: &str, body: &Value) -> Result<Value> {
        let url = self.url(endpoint);
        let body = body.to_string();
        let mut attempt = 0u32;
        loop {
            match self.try_once(&url, &body) {
                Ok(v) => return Ok(v),
                Err(f) if f.retry && attempt < self.cfg.max_retries => {
                    let exp = self
                        .cfg
                        .backoff_base
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(self.cfg.backoff_max);
                    let jittered = {
                        let mut rng = self.jitter.lock().unwrap_or_else(|p| p.into_inner());
                        exp.mul_f64(0.5 + 0.5 * rng.next_f64())
                    };
                    let delay = f
                        .retry_after
                        .map_or(jittered, |d| d.min(self.cfg.backoff_max));
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(f) => {
                    let tries = attempt + 1;
                    return Err(Error::Network(format!(
                        "{url} ({tries} {}): {}",
                        if tries == 1 { "try" } else { "tries" },
                        f.message
                    )));
                }
            }
        }
    }

    fn bad_shape(&self, endpoint: &str, what: &str, v: &Value) -> Error {
        Error::Network(format!(
            "{}: response has no {what}: {}",
            self.url(endpoint),
            excerpt(&v.to_string())
        ))
    }

    /// Log-probabilities of the tokens of `prompt + continuation` past `prompt`,
    /// via `/completions` with `echo`.
    fn completion_logprobs(&self, prompt: &str, continuation: &str) -> Result<LogProb> {
        let full = format!("{prompt}{continuation}");
        let body = json!({
            "model": self.cfg.model,
            "prompt": full,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": true,
            "logprobs": 0,
        });
        let v = self.post("completions", &body)?;
        let lp = v
            .pointer("/choices/0/logprobs")
            .ok_or_else(|| self.bad_shape("completions", "choices[0].logprobs", &v))?;
        let (Some(tlp), Some(off)) = (
            lp.get("token_logprobs").and_then(Value::as_array),
            lp.get("text_offset").and_then(Value::as_array),
        ) else {
            return Err(self.bad_shape("completions", "token_logprobs/text_offset", &v));
        };
        let start = prompt.chars().count() as u64;
        let end = full.chars().count() as u64;
        let mut total = 0.0;
        let mut n = 0;
        for (l, o) in tlp.iter().zip(off) {
            let o = o.as_u64().unwrap_or(0);
            if o >= start && o < end {
                total += l.as_f64().unwrap_or(f64::NEG_INFINITY);
                n += 1;
            }
        }
        Ok(LogProb {
            total,
            mean: if n > 0 { total / n as f64 } else { 0.0 },
            n_tokens: n,
        })
    }
}

impl Llm for OpenAiLlm {
    fn backend(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.cfg.model
    }

    fn chat(&self, messages: &[Message], params: &SamplingParams) -> Result<Generation> {
        let t0 = Instant::now();
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        let v = self.post("chat/completions", &body)?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad_shape("chat/completions", "choices[0].message.content", &v))?
            .to_string();
        let finish = match v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            Some("length") => FinishReason::Length,
            _ if params.stop.iter().any(|s| text.ends_with(s.as_str())) => FinishReason::StopString,
            _ => FinishReason::Stop,
        };
        let count = |k: &str| {
            v.pointer(&format!("/usage/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize
        };
        Ok(Generation {
            text,
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            finish,
        })
    }

    fn score_continuations(
        &self,
        prompt: &[Message],
        candidates: &[String],
    ) -> Result<Vec<LogProb>> {
        let p = self.cfg.completion_template.render(prompt);
        // One request per candidate, `concurrency` in flight; results in input order.
        parallel_map(candidates.len(), self.cfg.concurrency, |i| {
            self.completion_logprobs(&p, &candidates[i])
        })
        .into_iter()
        .collect()
    }

    fn generate_constrained(&self, prompt: &[Message], allowed: &[String]) -> Result<String> {
        let scores = self.score_continuations(prompt, allowed)?;
        allowed
            .iter()
            .zip(&scores)
            .max_by(|a, b| a.1.total.total_cmp(&b.1.total))
            .map(|(s, _)| s.clone())
            .ok_or_else(|| {
                Error::Invalid("constrained generation needs at least one allowed string".into())
            })
    }
}
