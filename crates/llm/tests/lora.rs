//! LoRA fine-tuning on tiny GGUF models with pseudo-random weights (written by
//! `llmrec_llm::testing`): the zero adapter is the base model bit for bit, the
//! forward matches the inference backend, gradients match finite differences, a
//! synthetic mapping is learnt to zero training error, a resumed run is the
//! uninterrupted one, and the backend loads, merges and exports adapters.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use llmrec_llm::lora::{self, FinetuneConfig, LoraConfig, LoraModel, Target, TokenBatch};
use llmrec_llm::testing::{TinyShape, write_tiny_gguf};
use llmrec_llm::{KvCache, Llm, LocalConfig, LocalLlm, Message, SamplingParams};
use llmrec_models::TrainEvent;

fn shape(arch: &'static str) -> TinyShape {
    TinyShape::small(arch)
}

fn tiny(dir: &Path, arch: &'static str) -> PathBuf {
    let p = dir.join(format!("tiny-{arch}.gguf"));
    write_tiny_gguf(&p, &shape(arch));
    p
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
        seed: 3,
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOKENS: [u32; 9] = [260, 5, 70, 71, 72, 3, 90, 91, 100];

/// With `B = 0` the adapters add exact zeros: the logits equal the base model's bit
/// for bit. And the trainer's forward is the backend's exact path (to 1e-4).
#[test]
fn zero_adapter_is_the_base_model_and_matches_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "qwen3"] {
        let path = tiny(dir.path(), arch);
        let m = LoraModel::load(&path, &all_targets()).unwrap();
        let with = flat(&m.logits(&TOKENS).unwrap());
        let base = flat(&m.base_logits(&TOKENS).unwrap());
        assert!(with == base, "{arch}: the zero adapter changed a logit");
        let llm = LocalLlm::load(&path, LocalConfig::default()).unwrap();
        let mut cache = KvCache::default();
        let exact = flat(&llm.forward(&TOKENS, &mut cache, true, true).unwrap());
        let d = max_diff(&with, &exact);
        assert!(d < 1e-4, "{arch}: trainer vs backend logits differ by {d}");
    }
}

/// The adapters' gradients match central finite differences of the loss.
#[test]
fn adapter_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), "qwen2");
    let cfg = LoraConfig {
        dropout: 0.1,
        ..all_targets()
    };
    let m = LoraModel::load(&path, &cfg).unwrap();
    // Non-zero B everywhere, so that A's gradients are non-zero too.
    let data = m.vars().data().lock().unwrap();
    for (name, v) in data.iter() {
        if name.ends_with("lora_b") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 40.0).collect();
            v.set(&Tensor::from_vec(vals, v.shape(), v.device()).unwrap())
                .unwrap();
        }
    }
    drop(data);
    let batch = TokenBatch::new(&[(&TOKENS[..], 4), (&TOKENS[..6], 3)]).unwrap();
    // Checkpointed gradients, without dropout and with it (the finite differences
    // then draw the same masks from the same seed, as the recomputed blocks must).
    let vars = m.vars().data().lock().unwrap().clone();
    let mut checked = 0;
    for seed in [None, Some(7u64)] {
        let (_, grads) = m.loss_and_grads(&batch, seed).unwrap();
        for name in [
            "blk.0.attn_q.lora_a",
            "blk.1.ffn_down.lora_b",
            "blk.1.attn_v.lora_a",
        ] {
            let v = &vars[name];
            let g = flat(grads.get(v.as_tensor()).unwrap());
            let base = flat(v.as_tensor());
            for idx in [0, base.len() / 2, base.len() - 1] {
                let eps = 1e-2f32;
                let at = |delta: f32| {
                    let mut x = base.clone();
                    x[idx] += delta;
                    v.set(&Tensor::from_vec(x, v.shape(), v.device()).unwrap())
                        .unwrap();
                    let l = m.loss(&batch, seed).unwrap() as f32;
                    v.set(&Tensor::from_vec(base.clone(), v.shape(), v.device()).unwrap())
                        .unwrap();
                    l
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                let tol = 2e-3 + 0.05 * numeric.abs();
                assert!(
                    (numeric - g[idx]).abs() <= tol,
                    "{name}[{idx}] (dropout seed {seed:?}): analytic {} vs numeric {numeric}",
                    g[idx]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

/// Chats that map a letter to a digit.
fn mapping_data(dir: &Path) -> PathBuf {
    let p = dir.join("map.jsonl");
    let mut text = String::new();
    for (q, a) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        for _ in 0..4 {
            let line = serde_json::json!({"messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ], "task": "map"});
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn mapping_cfg(epochs: usize) -> FinetuneConfig {
    FinetuneConfig {
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            seed: 5,
        },
        lr: 1e-2,
        warmup_steps: 2,
        batch_size: 4,
        max_grad_norm: 1.0,
        epochs,
        eval_every_steps: 4,
        valid_fraction: 0.1,
        seed: 9,
        ..Default::default()
    }
}

fn quiet(_: &TrainEvent) {}

/// A tiny model learns a synthetic letter-to-digit mapping to zero training error:
/// its loss falls near zero, and the backend, with the adapter merged at load,
/// answers every prompt with the right digit. The merged GGUF export answers the
/// same, with the same logits; the adapter refuses another base model.
#[test]
fn learns_a_mapping_and_the_backend_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), "llama");
    let data = mapping_data(dir.path());
    let run = dir.path().join("run");
    let report = lora::finetune(&base, &data, &mapping_cfg(40), &run, None, &mut quiet).unwrap();
    let last = report.rounds.last().unwrap();
    let curve: Vec<(f64, f64)> = report.rounds.iter().map(|r| (r.loss, r.lr)).collect();
    assert!(
        last.loss < 0.05,
        "final training loss {}: {curve:?}",
        last.loss
    );
    assert!(
        report.best_valid[lora::VALID_LOSS] < 0.05,
        "{:?}",
        report.best_valid
    );

    let cfg = LocalConfig {
        adapter: Some(run.join("best")),
        ..Default::default()
    };
    let tuned = LocalLlm::load(&base, cfg).unwrap();
    assert!(tuned.model().contains("+lora-"), "{}", tuned.model());
    let greedy = SamplingParams {
        max_tokens: 4,
        temperature: 0.0,
        ..Default::default()
    };
    for (q, a) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        let got = tuned.chat(&[Message::user(q)], &greedy).unwrap();
        assert_eq!(got.text.trim(), a, "{q}");
    }
    // Merged at load equals the trainer's forward with the adapter.
    let trained = LoraModel::load(&base, &mapping_cfg(1).lora).unwrap();
    let tensors = candle_core::safetensors::load(
        run.join("best/adapter.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (name, v) in trained.vars().data().lock().unwrap().iter() {
        v.set(&tensors[name]).unwrap();
    }
    let mut cache = KvCache::default();
    let served = flat(&tuned.forward(&TOKENS, &mut cache, true, true).unwrap());
    let d = max_diff(&served, &flat(&trained.logits(&TOKENS).unwrap()));
    assert!(d < 1e-3, "merged model vs trainer with adapter: {d}");
    // The merged export loads as a plain model and gives the same logits.
    let merged = dir.path().join("merged.gguf");
    lora::export_merged_gguf(&base, &run.join("best"), &merged).unwrap();
    let plain = LocalLlm::load(&merged, LocalConfig::default()).unwrap();
    let mut cache = KvCache::default();
    let exported = flat(&plain.forward(&TOKENS, &mut cache, true, true).unwrap());
    assert_eq!(exported, served);
    // Another base model: refused, naming both.
    let other = tiny(dir.path(), "qwen2");
    let e = LocalLlm::load(
        &other,
        LocalConfig {
            adapter: Some(run.join("best")),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sha256") && e.contains("tiny-llama"), "{e}");
}

/// A run stopped after 2 rounds and resumed from `last/` ends with the adapters,
/// records and best round of a run that went on in one go.
#[test]
fn a_resumed_run_is_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), "qwen3");
    let data = mapping_data(dir.path());
    let cfg = FinetuneConfig {
        lora: LoraConfig {
            dropout: 0.1,
            ..mapping_cfg(3).lora
        },
        ..mapping_cfg(3)
    };
    let whole = dir.path().join("whole");
    let once = lora::finetune(&base, &data, &cfg, &whole, None, &mut quiet).unwrap();
    let split = dir.path().join("split");
    let short = FinetuneConfig {
        max_seconds: 1e-9,
        ..cfg.clone()
    };
    let first = lora::finetune(&base, &data, &short, &split, None, &mut quiet).unwrap();
    assert_eq!(
        first.rounds.len(),
        1,
        "the time limit stops after one round"
    );
    let resumed = lora::finetune(
        &base,
        &data,
        &cfg,
        &split,
        Some(&split.join("last")),
        &mut quiet,
    )
    .unwrap();
    let bytes = |d: &Path| std::fs::read(d.join("last/adapter.safetensors")).unwrap();
    assert!(
        bytes(&whole) == bytes(&split),
        "adapters differ after the resume"
    );
    let losses = |r: &lora::FinetuneReport| r.rounds.iter().map(|e| e.loss).collect::<Vec<_>>();
    assert_eq!(losses(&resumed), losses(&once));
    assert_eq!(resumed.best_round, once.best_round);
    // Resuming with other settings is refused.
    let other = FinetuneConfig {
        lora: LoraConfig {
            rank: 2,
            ..cfg.lora.clone()
        },
        ..cfg
    };
    let e = lora::finetune(
        &base,
        &data,
        &other,
        &split,
        Some(&split.join("last")),
        &mut quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("LoRA settings"), "{e}");
}

/// Malformed data names the file and line.
#[test]
fn bad_data_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "{\"messages\": []}\n{\"text\": 1}\n").unwrap();
    let e = lora::data::read_chats(&p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("messages"), "{e}");
}
