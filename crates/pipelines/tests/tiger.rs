//! End-to-end TIGER on synthetic data.

use llmrec_core::{EvalConfig, Rng, Stage};
use llmrec_data::{split::leave_one_out, synthetic};
use llmrec_models::semantic_ids::IdScheme;
use llmrec_models::tiger::Config;
use llmrec_pipelines::tiger::{self, EvalOptions, IdsConfig, TrainConfig};

fn tiny() -> Config {
    Config {
        d_model: 32,
        heads: 2,
        head_dim: 16,
        d_ff: 64,
        encoder_layers: 1,
        decoder_layers: 1,
        dropout: 0.0,
        max_history: 4,
        user_buckets: 16,
        layer_norm_eps: 1e-6,
    }
}

#[test]
fn tiny_tiger_learns_a_next_item_rule() {
    let ds = synthetic::next_item_rule(200, 30, 8, 1);
    let split = leave_one_out(&ds);
    let mut rng = Rng::new(5);
    // Text embeddings: random vectors (the rule is not in the text).
    let emb: Vec<Vec<f32>> = (0..30)
        .map(|_| (0..8).map(|_| rng.normal() as f32).collect())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut ids_cfg = IdsConfig {
        scheme: IdScheme::Lsh,
        ..Default::default()
    };
    ids_cfg.rqvae.model.levels = 3;
    ids_cfg.rqvae.model.codebook_size = 8;
    let ids = tiger::semantic_ids(
        &ds,
        &emb,
        &ids_cfg,
        Some(&dir.path().join("ids")),
        &mut |_| {},
    )
    .unwrap()
    .ids;
    assert!(dir.path().join("ids/semantic_ids.json").exists());
    let cfg = TrainConfig {
        model: tiny(),
        epochs: 25,
        batch_size: 64,
        lr: 3e-3,
        patience: 0,
        eval_every: 5,
        beam_size: 10,
        ..Default::default()
    };
    let run = dir.path().join("train");
    let mut epochs = 0;
    let (model, report) = tiger::train(&ds, &split, &ids, &cfg, &run, &mut |e| {
        if let tiger::TrainEvent::Epoch(_) = e {
            epochs += 1;
        }
    })
    .unwrap();
    assert_eq!(epochs, 25);
    assert!(report.epochs.last().unwrap().loss < report.epochs[0].loss);
    for f in [
        "metrics.jsonl",
        "loss.svg",
        "valid.svg",
        "report.json",
        "best/checkpoint.json",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    let opts = EvalOptions {
        eval: EvalConfig {
            ks: vec![1, 10],
            ..Default::default()
        },
        stage: Stage::Test,
        beam_size: 10,
        ..Default::default()
    };
    let out = tiger::eval(&model, &split, &opts, Some(&run), &|_| {}).unwrap();
    let hr1 = out.report.get("HR@1").unwrap();
    assert!(
        hr1 >= 0.9,
        "HR@1 = {hr1}; {:?}",
        report.epochs.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
    assert_eq!(out.invalid_rate_constrained, 0.0);
    assert!(run.join("eval.json").exists());
    // The checkpoint reloads and refuses another dataset.
    let again = tiger::load_checkpoint(&run.join("best"), &ds, "cpu").unwrap();
    assert_eq!(again.beam_size, 30);
    let other = synthetic::next_item_rule(10, 30, 8, 2);
    let e = tiger::load_checkpoint(&run.join("best"), &other, "cpu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fingerprint"), "{e}");
}

#[test]
fn lr_schedule_is_constant_then_inverse_sqrt() {
    let c = TrainConfig {
        lr: 0.01,
        constant_steps: 100,
        ..Default::default()
    };
    assert_eq!(c.lr_at(1), 0.01);
    assert_eq!(c.lr_at(100), 0.01);
    assert!((c.lr_at(400) - 0.005).abs() < 1e-12);
}

#[test]
fn rqvae_ids_write_weights_and_input_standardisation() {
    let ds = synthetic::next_item_rule(40, 30, 6, 2);
    let mut rng = Rng::new(9);
    let emb: Vec<Vec<f32>> = (0..30)
        .map(|_| (0..8).map(|_| 3.0 + rng.normal() as f32).collect())
        .collect();
    let mut cfg = IdsConfig {
        scheme: IdScheme::RqVae,
        fail_on_collapse: false,
        ..Default::default()
    };
    cfg.rqvae.model.input_dim = 8;
    cfg.rqvae.model.hidden = vec![16];
    cfg.rqvae.model.latent_dim = 4;
    cfg.rqvae.model.levels = 2;
    cfg.rqvae.model.codebook_size = 4;
    cfg.rqvae.epochs = 3;
    cfg.rqvae.batch_size = 16;
    let dir = tempfile::tempdir().unwrap();
    let out = tiger::semantic_ids(&ds, &emb, &cfg, Some(dir.path()), &mut |_| {}).unwrap();
    assert_eq!(out.ids.n_items(), 30);
    for f in [
        "semantic_ids.json",
        "rqvae.safetensors",
        "rqvae_report.json",
        "rqvae_standardization.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let st: llmrec_models::semantic_ids::Standardization = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rqvae_standardization.json")).unwrap(),
    )
    .unwrap();
    let mean0 = emb.iter().map(|e| e[0] as f64).sum::<f64>() / 30.0;
    assert!((st.mean[0] as f64 - mean0).abs() < 1e-5);
    assert_eq!(st.scale.len(), 8);
}
