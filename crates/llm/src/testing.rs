//! Test support for this and other crates' tests (the `testkit` feature): tiny
//! GGUF models with pseudo-random weights, written in the format the local backend
//! and the LoRA trainer read. Not part of the library's API; it panics on I/O errors.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// GPT-2's byte-to-character table: printable bytes stand for themselves,
/// the others move to 256 and up.
pub fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// Tokens: the 256 bytes, the merges' results, then the chat tokens.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let merges = ["' V", "1 2", "Ġ a"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    (
        tokens,
        merges.iter().map(|m| m.to_string()).collect(),
        types,
    )
}

/// The sizes of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinyShape {
    /// `llama`, `qwen2` (with q/k/v biases) or `qwen3` (with q/k head norms).
    pub arch: &'static str,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of a head.
    pub head_dim: usize,
    /// Width of the feed-forward layer.
    pub ff: usize,
    /// Blocks.
    pub layers: usize,
    /// Scale of the output head's weights (0.3 in the parity tests; larger lets a
    /// tiny model reach confident predictions).
    pub output_scale: f32,
}

impl TinyShape {
    /// The small shape the LoRA, export and CLI tests share: width 32, 4 query heads
    /// and 2 key/value heads of 8, feed-forward 48, 2 blocks, output scale 3.
    pub fn small(arch: &'static str) -> TinyShape {
        TinyShape {
            arch,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            ff: 48,
            layers: 2,
            output_scale: 3.0,
        }
    }
}

/// A deterministic pseudo-random tensor in `[-scale, scale]`.
pub fn random_qtensor(shape: &[usize], seed: u64, scale: f32) -> QTensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Writes a tiny GGUF model with pseudo-random weights (seeded, so every call
/// writes the same file) and a byte-level vocabulary with ChatML tokens.
pub fn write_tiny_gguf(path: &Path, s: &TinyShape) {
    let (tokens, merges, types) = tiny_vocab();
    let v = tokens.len();
    let a = s.arch;
    let strings =
        |xs: &[String]| Value::Array(xs.iter().map(|x| Value::String(x.clone())).collect());
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (format!("{a}.block_count"), Value::U32(s.layers as u32)),
        (format!("{a}.embedding_length"), Value::U32(s.hidden as u32)),
        (format!("{a}.context_length"), Value::U32(1024)),
        (format!("{a}.attention.head_count"), Value::U32(s.heads as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(s.kv_heads as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (format!("{a}.rope.freq_base"), Value::F32(1_000_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(v as u32 - 1)),
        (
            "tokenizer.chat_template".into(),
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    .into(),
            ),
        ),
    ];
    if a == "qwen3" {
        md.push((
            format!("{a}.attention.key_length"),
            Value::U32(s.head_dim as u32),
        ));
        md.push((
            format!("{a}.attention.value_length"),
            Value::U32(s.head_dim as u32),
        ));
    }
    let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            random_qtensor(&[v, s.hidden], 1, 1.0),
        ),
        (
            "output_norm.weight".into(),
            random_qtensor(&[s.hidden], 2, 1.0),
        ),
        (
            "output.weight".into(),
            random_qtensor(&[v, s.hidden], 3, s.output_scale),
        ),
    ];
    for l in 0..s.layers {
        let seed = 100 * (l as u64 + 1);
        let p = format!("blk.{l}");
        let mut add = |name: &str, shape: &[usize], k: u64, scale: f32| {
            tensors.push((
                format!("{p}.{name}"),
                random_qtensor(shape, seed + k, scale),
            ));
        };
        add("attn_norm.weight", &[s.hidden], 1, 1.0);
        add("attn_q.weight", &[qd, s.hidden], 2, 0.3);
        add("attn_k.weight", &[kvd, s.hidden], 3, 0.3);
        add("attn_v.weight", &[kvd, s.hidden], 4, 0.3);
        add("attn_output.weight", &[s.hidden, qd], 5, 0.3);
        add("ffn_norm.weight", &[s.hidden], 6, 1.0);
        add("ffn_gate.weight", &[s.ff, s.hidden], 7, 0.3);
        add("ffn_up.weight", &[s.ff, s.hidden], 8, 0.3);
        add("ffn_down.weight", &[s.hidden, s.ff], 9, 0.3);
        if a == "qwen2" {
            add("attn_q.bias", &[qd], 10, 0.5);
            add("attn_k.bias", &[kvd], 11, 0.5);
            add("attn_v.bias", &[kvd], 12, 0.5);
        } else if a == "qwen3" {
            add("attn_q_norm.weight", &[s.head_dim], 13, 1.0);
            add("attn_k_norm.weight", &[s.head_dim], 14, 1.0);
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}
