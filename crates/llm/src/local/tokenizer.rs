//! The tokenizer built from the GGUF metadata (BPE vocabulary and merges, the
//! pre-tokenizer the model declares).

use candle_core::quantized::gguf_file;
use llmrec_core::Result;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::*;

/// The pre-tokenizer regex of Qwen2 and Qwen3 (their `tokenizer.json`).
pub(super) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn build_tokenizer(ct: &gguf_file::Content) -> Result<(Tokenizer, Vec<String>)> {
    let model = md(ct, "tokenizer.ggml.model")?.to_string().map_err(cerr)?;
    if model != "gpt2" {
        return Err(cerr(format!(
            "tokenizer model `{model}` is not supported (only byte-level BPE `gpt2`)"
        )));
    }
    let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
    let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(cerr)?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| cerr(format!("bad merge `{s}`")))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(cerr)?
            .iter()
            .map(|t| t.to_i32())
            .collect::<candle_core::Result<_>>()
            .map_err(cerr)?,
        None => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(cerr)?;
    let mut tok = Tokenizer::new(bpe);
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    // `smollm` (and llama.cpp's other digit-splitting pre-tokenizers): digits
    // one by one, then GPT-2 byte-level *without* a prefix space.
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        // Qwen2's own split (tokenizer.json of Qwen2 and Qwen3), then bytes
        // without their regex.
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(cerr)?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]))
        }
        "smollm" | "starcoder" | "refact" | "llama3" | "llama-bpe" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ]))
        }
        _ => PreTokenizerWrapper::ByteLevel(byte_level),
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control (3) and user-defined (4) tokens are matched as whole tokens.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    let _added = tok.add_special_tokens(special);
    Ok((tok, tokens))
}

impl LocalLlm {
    /// The tokenizer built from the GGUF metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text`; special tokens written in it (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(cerr)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(cerr)
    }
}
