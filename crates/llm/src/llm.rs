//! The [`Llm`] trait that every backend implements, and its message and
//! sampling types.

use llmrec_core::Result;
use serde::{Deserialize, Serialize};

/// Who says a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Sampling settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling mass in `(0, 1]`; `1` disables it.
    pub top_p: f32,
    /// Seed of the sampler (ignored by greedy decoding).
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            max_tokens,
            ..Default::default()
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model emitted its end-of-turn token.
    Stop,
    /// A stop string was produced.
    StopString,
    /// `max_tokens` was reached.
    Length,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Generated text (without the stop string or end-of-turn token).
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Wall time of the call, in milliseconds.
    pub latency_ms: f64,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Log-probability of one continuation given a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogProb {
    /// Sum of the token log-probabilities (natural log).
    pub total: f64,
    /// `total` divided by the number of tokens.
    pub mean: f64,
    /// Number of tokens of the continuation.
    pub n_tokens: usize,
}

/// A chat LLM backend.
///
/// Backends are shared across threads: all methods take `&self`.
pub trait Llm: Send + Sync {
    /// Backend name (`local`, `openai`), part of cache keys.
    fn backend(&self) -> &str;

    /// Model id, part of cache keys.
    fn model(&self) -> &str;

    /// Tokens of `messages` as a prompt, where the backend can count them
    /// locally (the local model); `None` otherwise.
    fn count_prompt_tokens(&self, messages: &[Message]) -> Option<usize> {
        let _ = messages;
        None
    }

    /// Generates the assistant's reply to `messages`.
    fn chat(&self, messages: &[Message], params: &SamplingParams) -> Result<Generation>;

    /// Generates replies to several conversations; backends that can decode
    /// several sequences together (the local one) override this. Results are
    /// in input order.
    fn chat_batch(&self, batch: &[(&[Message], &SamplingParams)]) -> Vec<Result<Generation>> {
        batch.iter().map(|(m, p)| self.chat(m, p)).collect()
    }

    /// Log-probability of each candidate as the assistant's reply to `prompt`.
    fn score_continuations(
        &self,
        prompt: &[Message],
        candidates: &[String],
    ) -> Result<Vec<LogProb>>;

    /// The assistant's reply to `prompt`, constrained to be exactly one of `allowed`.
    fn generate_constrained(&self, prompt: &[Message], allowed: &[String]) -> Result<String>;
}
