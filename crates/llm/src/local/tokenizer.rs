//! The tokenizer built from the GGUF metadata: byte-level BPE (vocabulary, merges
//! and the pre-tokenizer the model declares) or SentencePiece BPE (vocabulary and
//! scores).

use candle_core::quantized::gguf_file;
use llmrec_core::Result;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

use super::*;

/// The pre-tokenizer regex of Qwen2 and Qwen3 (their `tokenizer.json`).
pub(super) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(crate) fn build_tokenizer(ct: &gguf_file::Content) -> Result<(Tokenizer, Vec<String>)> {
    let model = md(ct, "tokenizer.ggml.model")?.to_string().map_err(cerr)?;
    let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
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
    let mut tok = match model.as_str() {
        "gpt2" => byte_level_bpe(ct, &tokens)?,
        "llama" => sentencepiece_bpe(ct, &tokens)?,
        other => {
            return Err(cerr(format!(
                "tokenizer model `{other}` is not supported (byte-level BPE `gpt2`, \
                 SentencePiece BPE `llama`)"
            )));
        }
    };
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

/// The vocabulary as the BPE model takes it: each token with its id.
fn vocab_of(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// SentencePiece BPE (Gemma, Llama 2): the file carries scores, not merges. A merge
/// `(l, r)` exists wherever both halves of a token are tokens; merges rank by the
/// merged token's score, those of one token by their halves' scores (the order
/// `transformers` derives when it reads such a GGUF file, which the parity tests
/// compare with). Spaces become `▁`; characters outside the vocabulary fall back to
/// their UTF-8 bytes (`<0x41>`).
fn sentencepiece_bpe(ct: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer> {
    let scores: Vec<f32> = md(ct, "tokenizer.ggml.scores")?
        .to_vec()
        .map_err(cerr)?
        .iter()
        .map(|v| v.to_f32())
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
    if scores.len() != tokens.len() {
        return Err(cerr(format!(
            "{} token scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let score: std::collections::HashMap<&str, f32> = tokens
        .iter()
        .zip(&scores)
        .map(|(t, &s)| (t.as_str(), s))
        .collect();
    let desc = |a: f32, b: f32| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    let mut local: Vec<(&str, &str, f32)> = Vec::new();
    for (piece, &s) in tokens.iter().zip(&scores) {
        local.clear();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if score.contains_key(l) && score.contains_key(r) {
                local.push((l, r, s));
            }
        }
        // Stable sorts, descending: ties keep vocabulary order.
        local.sort_by(|a, b| {
            desc(score[a.0], score[b.0]).then_with(|| desc(score[a.1], score[b.1]))
        });
        merges.extend_from_slice(&local);
    }
    merges.sort_by(|a, b| desc(a.2, b.2));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect();
    let unk = ct
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(cerr)?;
    let mut tok = Tokenizer::new(bpe);
    let space_prefix = ct
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let replace = Replace::new(" ", "\u{2581}").map_err(cerr)?;
    if space_prefix {
        tok.with_normalizer(Some(NormalizerWrapper::Sequence(
            tokenizers::normalizers::Sequence::new(vec![
                NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())),
                NormalizerWrapper::Replace(replace.clone()),
            ]),
        )))
        .map_err(cerr)?;
    } else {
        tok.with_normalizer(Some(replace)).map_err(cerr)?;
    }
    tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(cerr)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ]))));
    Ok(tok)
}

/// Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen) with the file's merges and
/// the pre-tokenizer it declares.
fn byte_level_bpe(ct: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer> {
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
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges)
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
    Ok(tok)
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
