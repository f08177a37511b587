//! Fine-tuning data: chat JSONL (one `{"messages": [...]}` object a line, the last
//! message the assistant's answer; `palr export-sft` writes this shape, with extra
//! fields that are ignored), tokenized with the base model's chat template, split
//! into training and validation examples by a seeded shuffle.

use std::io::Read;
use std::path::Path;

use llmrec_core::{Error, Result, Rng};
use sha2::{Digest, Sha256};

use crate::llm::Message;
use crate::local::LocalLlm;

/// One tokenized chat: prompt then answer; the loss covers the answer only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt tokens, then the answer's tokens and the end-of-turn token.
    pub tokens: Vec<u32>,
    /// Where the answer starts in `tokens`.
    pub answer_start: usize,
}

/// The chats of a JSONL file; a malformed line is an error naming the file and line.
pub fn read_chats(path: &Path) -> Result<Vec<Vec<Message>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::parse(path, i + 1, format!("not JSON: {e}")))?;
        let messages = v.get("messages").cloned().ok_or_else(|| {
            Error::parse(path, i + 1, "expected an object with a `messages` list")
        })?;
        let messages: Vec<Message> = serde_json::from_value(messages).map_err(|e| {
            Error::parse(
                path,
                i + 1,
                format!("`messages` must be a list of {{role, content}}: {e}"),
            )
        })?;
        out.push(messages);
    }
    if out.is_empty() {
        return Err(Error::parse(path, 0, "no examples"));
    }
    Ok(out)
}

/// The sha256 of a file, in hex (recorded with every adapter: which data, which base).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// How the examples were split and sized.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataReport {
    /// Chats in the file.
    pub chats: usize,
    /// Left out for being longer than the token limit.
    pub too_long: usize,
    /// Training examples (after the `max_examples` sample).
    pub train: usize,
    /// Validation examples.
    pub valid: usize,
    /// Answer tokens in the training examples.
    pub train_answer_tokens: usize,
}

/// Tokenizes `chats` with `llm`'s template, leaves out those over `max_tokens`,
/// holds out `valid_fraction` (at most `valid_max`, at least 1 when there are two
/// or more examples) for validation, and samples at most `max_examples` (0: all) of
/// the rest for training. Seeded: the same inputs give the same split.
pub fn prepare(
    llm: &LocalLlm,
    chats: &[Vec<Message>],
    max_tokens: usize,
    valid_fraction: f64,
    valid_max: usize,
    max_examples: usize,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>, DataReport)> {
    let mut all = Vec::with_capacity(chats.len());
    let mut too_long = 0;
    for (i, chat) in chats.iter().enumerate() {
        let (tokens, answer_start) = llm
            .answer_tokens(chat)
            .map_err(|e| Error::Invalid(format!("example {}: {e}", i + 1)))?;
        if tokens.len() > max_tokens {
            too_long += 1;
            continue;
        }
        all.push(Example {
            tokens,
            answer_start,
        });
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    Rng::stream(seed, 0x5A17).shuffle(&mut order);
    let n_valid = if all.len() >= 2 {
        ((all.len() as f64 * valid_fraction).round() as usize)
            .clamp(1, valid_max.max(1))
            .min(all.len() - 1)
    } else {
        0
    };
    let valid: Vec<Example> = order[..n_valid].iter().map(|&i| all[i].clone()).collect();
    let mut rest: Vec<usize> = order[n_valid..].to_vec();
    if max_examples > 0 && rest.len() > max_examples {
        rest.truncate(max_examples);
    }
    rest.sort_unstable();
    let train: Vec<Example> = rest.iter().map(|&i| all[i].clone()).collect();
    if train.is_empty() {
        return Err(Error::Invalid(format!(
            "no training examples: {} chats, {too_long} over {max_tokens} tokens",
            chats.len()
        )));
    }
    let report = DataReport {
        chats: chats.len(),
        too_long,
        train: train.len(),
        valid: valid.len(),
        train_answer_tokens: train.iter().map(|e| e.tokens.len() - e.answer_start).sum(),
    };
    Ok((train, valid, report))
}

/// Micro-batches of one pass: examples sorted by length in seeded chunks (less
/// padding), cut into batches of `batch_size`, the batches in seeded order.
pub(crate) fn batches(examples: &[Example], batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut order);
    // Sort within windows of 16 batches: similar lengths, still a random mix.
    for w in order.chunks_mut(batch_size * 16) {
        w.sort_by_key(|&i| examples[i].tokens.len());
    }
    let mut out: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    rng.shuffle(&mut out);
    out
}
