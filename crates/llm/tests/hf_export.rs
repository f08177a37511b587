//! The Hugging Face export: a tiny llama and a tiny Qwen2 GGUF written out as
//! safetensors, run by an independent forward written the Hugging Face way (rotary
//! embedding by halves, `rotate_half`), give the local backend's logits. For
//! llama this checks that the query and key rows are put back in Hugging Face's
//! order.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor};
use llmrec_llm::lora::export_merged_hf;
use llmrec_llm::testing::{TinyShape, write_tiny_gguf};
use llmrec_llm::{DecodeWeights, KvCache, LocalConfig, LocalLlm};
use serde_json::Value;

fn rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
}

fn linear(x: &Tensor, w: &HashMap<String, Tensor>, name: &str) -> Tensor {
    let y = x
        .matmul(&w[&format!("{name}.weight")].t().unwrap())
        .unwrap();
    match w.get(&format!("{name}.bias")) {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    }
}

/// `x (heads, t, hd)` rotated as transformers does: `x cos + rotate_half(x) sin`.
fn rotate(x: &Tensor, theta: f64) -> Tensor {
    let (_, t, hd) = x.dims3().unwrap();
    let half = hd / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..t {
        for i in 0..hd {
            let f = (p as f64) * theta.powf(-((2 * (i % half)) as f64) / hd as f64);
            cos.push(f.cos() as f32);
            sin.push(f.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (t, hd), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(sin, (t, hd), &Device::Cpu).unwrap();
    let x1 = x.narrow(2, 0, half).unwrap();
    let x2 = x.narrow(2, half, half).unwrap();
    let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], 2).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
}

/// Logits `(t, vocab)` of `tokens` from the exported folder, the Hugging Face way.
fn hf_forward(dir: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (layers, heads, kv, hd) = (
        n("num_hidden_layers"),
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("head_dim"),
    );
    let eps = cfg["rms_norm_eps"].as_f64().unwrap();
    let theta = cfg["rope_theta"].as_f64().unwrap();
    let t = tokens.len();
    let ids = Tensor::new(tokens, &Device::Cpu).unwrap();
    let mut x = w["model.embed_tokens.weight"]
        .index_select(&ids, 0)
        .unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let xn = rms(&x, &w[&format!("{p}.input_layernorm.weight")], eps);
        let split = |z: Tensor, h: usize| {
            z.reshape((t, h, hd))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = split(linear(&xn, &w, &format!("{p}.self_attn.q_proj")), heads);
        let k = split(linear(&xn, &w, &format!("{p}.self_attn.k_proj")), kv);
        let v = split(linear(&xn, &w, &format!("{p}.self_attn.v_proj")), kv);
        let (q, k) = (rotate(&q, theta), rotate(&k, theta));
        let mut outs = Vec::new();
        for h in 0..heads {
            let g = h / (heads / kv);
            let qh = q.get(h).unwrap();
            let kh = k.get(g).unwrap();
            let att = (qh.matmul(&kh.t().unwrap()).unwrap() / (hd as f64).sqrt())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
            outs.push(att.matmul(&v.get(g).unwrap()).unwrap());
        }
        let y = Tensor::cat(&outs, 1).unwrap();
        x = (x + linear(&y, &w, &format!("{p}.self_attn.o_proj"))).unwrap();
        let xn = rms(&x, &w[&format!("{p}.post_attention_layernorm.weight")], eps);
        let g = linear(&xn, &w, &format!("{p}.mlp.gate_proj"));
        let u = linear(&xn, &w, &format!("{p}.mlp.up_proj"));
        let act = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        x = (x + linear(&act, &w, &format!("{p}.mlp.down_proj"))).unwrap();
    }
    let x = rms(&x, &w["model.norm.weight"], eps);
    let head = w
        .get("lm_head.weight")
        .unwrap_or(&w["model.embed_tokens.weight"]);
    x.matmul(&head.t().unwrap()).unwrap().to_vec2().unwrap()
}

fn check(arch: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join(format!("tiny-{arch}.gguf"));
    write_tiny_gguf(&base, &TinyShape::small(arch));
    let out = dir.path().join("hf");
    export_merged_hf(&base, None, &out).unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let tokens = [3u32, 17, 9, 40, 2, 11, 7];
    let m = LocalLlm::load(
        &base,
        LocalConfig {
            decode_weights: DecodeWeights::F32,
            ..LocalConfig::default()
        },
    )
    .unwrap();
    let mut cache = KvCache::default();
    let ours = m
        .forward(&tokens, &mut cache, true, true)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let theirs = hf_forward(&out, &tokens);
    let diff = ours
        .iter()
        .flatten()
        .zip(theirs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{arch}: logits differ by {diff}");
}

#[test]
fn llama_export_runs_the_hugging_face_way() {
    check("llama");
}

#[test]
fn qwen2_export_runs_the_hugging_face_way() {
    check("qwen2");
}

#[test]
fn a_file_that_is_not_gguf_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let e = export_merged_hf(&junk, None, &out).unwrap_err().to_string();
    assert!(e.contains("junk.gguf"), "{e}");
    assert!(!out.exists());
}
