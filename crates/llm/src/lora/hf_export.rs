//! The merged model in the Hugging Face layout, for servers that load it (vLLM, TGI,
//! transformers): `model.safetensors` (f32, the adapters merged), `config.json`,
//! `tokenizer.json` and `tokenizer_config.json` (with the chat template).
//!
//! GGUF stores llama's query and key projections with the rows of each head
//! reordered for interleaved rotary pairs (llama.cpp's converter does that); the
//! Hugging Face layout rotates halves, so those two matrices are put back in its
//! order. Qwen2 and Qwen3 files keep the Hugging Face order and are written as
//! they are.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use llmrec_core::io::sibling;
use llmrec_core::{Error, Result};
use serde_json::{Value, json};

use super::adapter::Adapter;
use crate::gguf::{GgufFile, Spec, md};
use crate::local::build_tokenizer;

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("hf-export", e)
}

/// The Hugging Face name of a GGUF tensor of a llama, Qwen2 or Qwen3 model, or
/// `None` for a tensor the Hugging Face model has no place for.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let top = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's reordering of a query or key projection `w (heads * hd, in)`
/// (or its bias, `(heads * hd)`): within each head, row `2i` goes back to `i` and
/// row `2i + 1` to `hd/2 + i`.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Writes the base GGUF model `base`, with the adapter folder `adapter` merged when
/// given, to the folder `out` in the Hugging Face layout (f32 weights). The folder
/// is written beside `out` and renamed into place. Llama, Qwen2 and Qwen3 only.
pub fn export_merged_hf(base: &Path, adapter: Option<&Path>, out: &Path) -> Result<()> {
    let mut gguf = GgufFile::open(base)?;
    let spec = Spec::read(&gguf.content, base)?;
    let (arch_name, model_type) = match spec.arch.as_str() {
        "llama" => ("LlamaForCausalLM", "llama"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        other => {
            return Err(Error::Artifact {
                path: base.to_path_buf(),
                message: format!(
                    "a Hugging Face export of architecture `{other}` is not supported \
                     (llama, qwen2, qwen3)"
                ),
            });
        }
    };
    let adapter = match adapter {
        Some(dir) => Some(Adapter::load(dir, base)?),
        None => None,
    };
    let names: Vec<String> = gguf.content.tensor_infos.keys().cloned().collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(names.len());
    for name in &names {
        let Some(hf) = hf_name(name) else {
            return Err(Error::Artifact {
                path: base.to_path_buf(),
                message: format!("tensor `{name}` has no Hugging Face counterpart"),
            });
        };
        let mut w = gguf
            .tensor(base, name)?
            .dequantize(&Device::Cpu)
            .map_err(cerr)?;
        let layer_target = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, rest)| Some((l.parse::<usize>().ok()?, rest.strip_suffix(".weight")?)));
        if let (Some(a), Some((layer, target))) = (&adapter, layer_target)
            && let Some(delta) = a.delta(layer, target)
        {
            w = (w + delta?).map_err(cerr)?;
        }
        if spec.arch == "llama" {
            if name.contains(".attn_q.") {
                w = unpermute_rows(&w, spec.n_head).map_err(cerr)?;
            } else if name.contains(".attn_k.") {
                w = unpermute_rows(&w, spec.n_kv_head).map_err(cerr)?;
            }
        }
        tensors.insert(hf, w);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let ffn = tensors
        .get("model.layers.0.mlp.gate_proj.weight")
        .and_then(|t| t.dims2().ok())
        .map(|(rows, _)| rows)
        .ok_or_else(|| cerr("no layer 0 gate projection"))?;
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|t| t.dims2().ok())
        .map(|(rows, _)| rows)
        .ok_or_else(|| cerr("no token embeddings"))?;
    let token_id = |key: &str| -> Value {
        gguf.content
            .metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .map_or(Value::Null, |v| json!(v))
    };
    let config = json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": spec.dim,
        "intermediate_size": ffn,
        "num_hidden_layers": spec.n_layer,
        "num_attention_heads": spec.n_head,
        "num_key_value_heads": spec.n_kv_head,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": spec.eps,
        "rope_theta": spec.rope_base,
        "max_position_embeddings": spec.max_context,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "attention_bias": tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    });
    if tied {
        tensors.remove("lm_head.weight");
    }
    // The tokenizer as the local backend builds it from the same file (no weights
    // loaded a second time).
    let (tokenizer, tokens) = build_tokenizer(&gguf.content)?;
    let template = md(&gguf.content, "tokenizer.chat_template")
        .ok()
        .and_then(|v| v.to_string().ok().cloned());
    let token_text = |key: &str| -> Value {
        gguf.content
            .metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .and_then(|i| tokens.get(i as usize).cloned())
            .map_or(Value::Null, Value::String)
    };
    let tokenizer_config = json!({
        "chat_template": template,
        "bos_token": token_text("tokenizer.ggml.bos_token_id"),
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "model_max_length": spec.max_context,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });

    let tmp = sibling(out, ".tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let weights = tmp.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(cerr)?;
    let write_json = |file: &str, v: &Value| -> Result<()> {
        let p = tmp.join(file);
        let text = serde_json::to_string_pretty(v).map_err(cerr)?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    };
    write_json("config.json", &config)?;
    write_json("tokenizer_config.json", &tokenizer_config)?;
    let tok = tmp.join("tokenizer.json");
    tokenizer.save(&tok, true).map_err(cerr)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}
