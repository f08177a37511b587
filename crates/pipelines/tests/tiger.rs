//! End-to-end TIGER on synthetic data.

use llmrec_core::{EvalConfig, Rng, Stage};
use llmrec_data::{split::leave_one_out, synthetic};
use llmrec_models::semantic_ids::IdScheme;
use llmrec_models::tiger::TigerConfig;
use llmrec_pipelines::tiger::{self, EvalOptions, IdsConfig, TigerTrainConfig};

fn tiny() -> TigerConfig {
    TigerConfig {
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
        tie_embeddings: false,
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
    let cfg = TigerTrainConfig {
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
    // Beams skip history items only when asked and when the evaluator excludes them.
    assert!(out.beam_skips_history);
    for (skip, exclude) in [(false, true), (true, false)] {
        let mut o = opts.clone();
        o.beam_skips_history = skip;
        o.eval.exclude_history = exclude;
        let r = tiger::eval(&model, &split, &o, None, &|_| {}).unwrap();
        assert!(!r.beam_skips_history, "skip {skip}, exclude {exclude}");
    }
    // The checkpoint reloads and refuses another dataset.
    let again = tiger::load_checkpoint(&run.join("best"), &ds, "cpu").unwrap();
    assert_eq!(again.beam_size, 30);
    // Its record names the best epoch, the network and the ID table that made it.
    let about = tiger::checkpoint_provenance(&run.join("best"), &ds).unwrap();
    assert_eq!(about["epoch"], report.best_epoch);
    assert_eq!(about["config"]["d_model"], cfg.model.d_model);
    assert_eq!(about["semantic_ids"]["scheme"], "lsh");
    assert_eq!(about["semantic_ids"]["seed"], ids.seed);
    assert_eq!(about["semantic_ids"]["codebook_size"], 8);
    assert!(about["semantic_ids"].get("codes").is_none());
    let other = synthetic::next_item_rule(10, 30, 8, 2);
    let e = tiger::load_checkpoint(&run.join("best"), &other, "cpu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fingerprint"), "{e}");
}

#[test]
fn lr_schedule_is_constant_then_inverse_sqrt() {
    let c = TigerTrainConfig {
        lr: 0.01,
        constant_steps: 100,
        ..Default::default()
    };
    assert_eq!(c.lr_at(1), 0.01);
    assert_eq!(c.lr_at(100), 0.01);
    assert!((c.lr_at(400) - 0.005).abs() < 1e-12);
}

/// 30 synthetic items with 8-d off-centre embeddings, and a tiny RQ-VAE ID config.
fn tiny_rqvae_setup() -> (llmrec_core::Dataset, Vec<Vec<f32>>, IdsConfig) {
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
    (ds, emb, cfg)
}

#[test]
fn rqvae_ids_write_weights_and_input_standardisation() {
    let (ds, emb, cfg) = tiny_rqvae_setup();
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

/// The collaborative graph of `ids.collab` holds training interactions only: moving every
/// user's validation and test items elsewhere leaves the spectral vectors and the IDs
/// unchanged, while moving one training interaction changes the graph.
#[test]
fn collaborative_graph_holds_training_interactions_only() {
    let (ds, emb, mut cfg) = tiny_rqvae_setup();
    cfg.collab.share = 0.5;
    cfg.collab.spectral.dim = 4;
    cfg.collab.spectral.oversample = 4;
    let n_items = ds.n_items() as u32;
    // Positions of each user's interactions (grouped by user, oldest first).
    let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); ds.n_users()];
    for (p, x) in ds.interactions.iter().enumerate() {
        by_user[x.user as usize].push(p);
    }
    let with_moved = |positions: &[usize]| {
        let mut d = ds.clone();
        for &p in positions {
            d.interactions[p].item = (d.interactions[p].item + 11) % n_items;
        }
        d
    };
    let held_out: Vec<usize> = by_user
        .iter()
        .flat_map(|ps| ps[ps.len() - 2..].to_vec())
        .collect();
    let ids_and_report = |d: &llmrec_core::Dataset| {
        let dir = tempfile::tempdir().unwrap();
        let out = tiger::semantic_ids(d, &emb, &cfg, Some(dir.path()), &mut |_| {}).unwrap();
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("collab_report.json")).unwrap(),
        )
        .unwrap();
        (out.ids.codes, report)
    };
    let (codes, report) = ids_and_report(&ds);
    let (moved_codes, moved_report) = ids_and_report(&with_moved(&held_out));
    assert_eq!(
        report, moved_report,
        "validation or test items reached the graph"
    );
    assert_eq!(codes, moved_codes);
    // Control: one training interaction moved does change the graph.
    let (_, trained_report) = ids_and_report(&with_moved(&by_user[0][..1]));
    assert_ne!(report["eigenvalues"], trained_report["eigenvalues"]);
}

/// With `ids.collab`, the RQ-VAE runs on text plus spectral vectors of the training
/// graph, without its own standardisation, and the table records the fusion.
#[test]
fn collaborative_fusion_widens_the_rqvae_input_and_is_recorded() {
    let (ds, emb, mut cfg) = tiny_rqvae_setup();
    cfg.collab.share = 0.5;
    cfg.collab.spectral.dim = 4;
    cfg.collab.spectral.oversample = 4;
    let dir = tempfile::tempdir().unwrap();
    let out = tiger::semantic_ids(&ds, &emb, &cfg, Some(dir.path()), &mut |_| {}).unwrap();
    assert_eq!(out.ids.n_items(), 30);
    assert!(dir.path().join("collab_report.json").exists());
    assert!(
        !dir.path().join("rqvae_standardization.json").exists(),
        "the fused input is standardised before the RQ-VAE, not by it"
    );
    assert_eq!(out.ids.config["model"]["input_dim"], 12);
    assert_eq!(out.ids.config["standardize"], false);
    assert_eq!(out.ids.config["collab"]["config"]["share"], 0.5);
    // A negative share, or embeddings that do not match input_dim, are errors.
    let mut bad = cfg.clone();
    bad.collab.share = -0.1;
    let e = tiger::semantic_ids(&ds, &emb, &bad, None, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("ids.collab.share"), "{e}");
    let mut bad = cfg.clone();
    bad.rqvae.model.input_dim = 9;
    let e = tiger::semantic_ids(&ds, &emb, &bad, None, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("input_dim"), "{e}");
    // Other schemes refuse the fusion instead of ignoring it.
    cfg.scheme = IdScheme::Lsh;
    let e = tiger::semantic_ids(&ds, &emb, &cfg, None, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("ids.collab.share"), "{e}");
}

/// 80 users of a next-item rule over 20 items, split, with 2-level LSH IDs.
fn lsh_setup() -> (
    llmrec_core::Dataset,
    llmrec_core::SequenceSplit,
    llmrec_models::semantic_ids::SemanticIds,
) {
    let ds = synthetic::next_item_rule(80, 20, 6, 2);
    let split = leave_one_out(&ds);
    let emb: Vec<Vec<f32>> = {
        let mut rng = Rng::new(3);
        (0..20)
            .map(|_| (0..8).map(|_| rng.normal() as f32).collect())
            .collect()
    };
    let mut ids_cfg = IdsConfig {
        scheme: IdScheme::Lsh,
        ..Default::default()
    };
    ids_cfg.rqvae.model.levels = 2;
    ids_cfg.rqvae.model.codebook_size = 8;
    let ids = tiger::semantic_ids(&ds, &emb, &ids_cfg, None, &mut |_| {})
        .unwrap()
        .ids;
    (ds, split, ids)
}

/// A tiny training config with dropout, validating every epoch.
fn small_run(epochs: usize) -> TigerTrainConfig {
    TigerTrainConfig {
        model: TigerConfig {
            dropout: 0.1,
            ..tiny()
        },
        epochs,
        batch_size: 32,
        lr: 3e-3,
        constant_steps: 5,
        patience: 0,
        eval_every: 1,
        beam_size: 5,
        ..Default::default()
    }
}

/// A run stopped after 2 epochs and resumed from `last/` to 4 ends with the same weights,
/// losses and best epoch as a run of 4 epochs in one go (dropout on, so the per-epoch
/// seeding of masks and batch order is exercised too). Mismatching resumes are refused.
#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    let (ds, split, ids) = lsh_setup();
    let cfg = small_run;
    let dir = tempfile::tempdir().unwrap();
    let (once, whole) = (dir.path().join("once"), dir.path().join("resumed"));
    let (_, full) = tiger::train(&ds, &split, &ids, &cfg(4), &once, &mut |_| {}).unwrap();
    tiger::train(&ds, &split, &ids, &cfg(2), &whole, &mut |_| {}).unwrap();
    let resumed_cfg = TigerTrainConfig {
        resume_from: Some(whole.join("last")),
        ..cfg(4)
    };
    let (_, resumed) = tiger::train(&ds, &split, &ids, &resumed_cfg, &whole, &mut |_| {}).unwrap();
    let losses = |r: &tiger::TigerTrainReport| r.epochs.iter().map(|e| e.loss).collect::<Vec<_>>();
    assert_eq!(resumed.epochs.len(), 4, "earlier epochs are kept");
    assert_eq!(losses(&full), losses(&resumed));
    assert_eq!(full.best_epoch, resumed.best_epoch);
    for f in ["last/weights.safetensors", "best/weights.safetensors"] {
        let (a, b) = (
            std::fs::read(once.join(f)).unwrap(),
            std::fs::read(whole.join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs");
    }
    // Another model shape, another ID table, or a `best/` folder are refused, and a
    // refused resume leaves the run folder as it was.
    let config_before = std::fs::read(whole.join("train_config.json")).unwrap();
    let other_shape = TigerTrainConfig {
        model: TigerConfig {
            d_ff: 32,
            ..resumed_cfg.model.clone()
        },
        ..resumed_cfg.clone()
    };
    let e = tiger::train(&ds, &split, &ids, &other_shape, &whole, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("model configuration differs"), "{e}");
    let mut other_ids = ids.clone();
    other_ids.codes.swap(0, 1);
    let e = tiger::train(&ds, &split, &other_ids, &resumed_cfg, &whole, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("Semantic-ID table differs"), "{e}");
    let from_best = TigerTrainConfig {
        resume_from: Some(whole.join("best")),
        ..cfg(4)
    };
    let e = tiger::train(&ds, &split, &ids, &from_best, &whole, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("no training state"), "{e}");
    assert_eq!(
        std::fs::read(whole.join("train_config.json")).unwrap(),
        config_before
    );
    // A crash between the two renames of a checkpoint save leaves `last.old`: resuming
    // from `last` finds it and trains the one remaining epoch.
    std::fs::rename(whole.join("last"), whole.join("last.old")).unwrap();
    let (_, fifth) = tiger::train(
        &ds,
        &split,
        &ids,
        &TigerTrainConfig {
            resume_from: Some(whole.join("last")),
            ..cfg(5)
        },
        &whole,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fifth.epochs.len(), 5);
    assert_eq!(losses(&fifth)[..4], losses(&full)[..]);
    // Resumed into another run's folder (`once`, with its own records and best/), a run
    // keeps none of that folder's records or best weights: it starts its own.
    let (_, moved) = tiger::train(
        &ds,
        &split,
        &ids,
        &TigerTrainConfig {
            resume_from: Some(whole.join("last")),
            ..cfg(6)
        },
        &once,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(moved.epochs.len(), 1, "only epoch 6 is this run's");
    assert_eq!((moved.epochs[0].epoch, moved.best_epoch), (6, 6));
}

/// `average_checkpoints` writes the element-wise mean of the inputs' weights as a
/// checkpoint that loads and records its inputs; fewer than two inputs, another network
/// shape, another ID table and writing over an input are refused.
#[test]
fn averaged_checkpoints_hold_the_mean_weights() {
    let (ds, split, ids) = lsh_setup();
    let dir = tempfile::tempdir().unwrap();
    let (one, three) = (dir.path().join("one"), dir.path().join("three"));
    tiger::train(&ds, &split, &ids, &small_run(1), &one, &mut |_| {}).unwrap();
    let keep = TigerTrainConfig {
        keep_every: 2,
        ..small_run(3)
    };
    tiger::train(&ds, &split, &ids, &keep, &three, &mut |_| {}).unwrap();
    // `keep_every = 2` kept epoch 2 only, without optimizer moments.
    let kept: Vec<_> = std::fs::read_dir(three.join("epochs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept, ["epoch-002"]);
    let epoch2 = three.join("epochs/epoch-002");
    assert!(!epoch2.join("optimizer.safetensors").exists());
    assert_eq!(
        tiger::checkpoint_provenance(&epoch2, &ds).unwrap()["epoch"],
        2
    );
    let inputs = vec![one.join("last"), three.join("last")];
    let out = dir.path().join("avg");
    let from = tiger::average_checkpoints(&inputs, &ds, &out).unwrap();
    let epochs: Vec<usize> = from.iter().map(|f| f.epoch).collect();
    assert_eq!(epochs, [1, 3]);
    let three_ways = [inputs.clone(), vec![epoch2]].concat();
    let from = tiger::average_checkpoints(&three_ways, &ds, &dir.path().join("avg3")).unwrap();
    assert_eq!(from.len(), 3);

    let load = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("weights.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (a, b, m) = (load(&inputs[0]), load(&inputs[1]), load(&out));
    assert_eq!(m.len(), a.len());
    let mut moved = 0;
    for (name, t) in &m {
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (x, y, z) = (flat(&a[name]), flat(&b[name]), flat(t));
        for i in 0..z.len() {
            assert!((z[i] - (x[i] + y[i]) / 2.0).abs() <= 1e-6, "{name}[{i}]");
            moved += usize::from(x[i] != y[i]);
        }
    }
    assert!(
        moved > 0,
        "training changed no weight between epochs 1 and 3"
    );
    // It loads like any checkpoint and says where it came from.
    let model = tiger::load_checkpoint(&out, &ds, "cpu").unwrap();
    let r = tiger::eval(&model, &split, &EvalOptions::default(), None, &|_| {}).unwrap();
    assert_eq!(r.invalid_rate_constrained, 0.0);
    let about = tiger::checkpoint_provenance(&out, &ds).unwrap();
    assert_eq!(about["epoch"], 3);
    assert_eq!(about["averaged_from"][1]["epoch"], 3);

    let e = tiger::average_checkpoints(&inputs[..1], &ds, &out).unwrap_err();
    assert!(e.to_string().contains("at least two"), "{e}");
    let e = tiger::average_checkpoints(&inputs, &ds, &inputs[1]).unwrap_err();
    assert!(e.to_string().contains("one of the checkpoints"), "{e}");
    let other = dir.path().join("other");
    let shape = TigerTrainConfig {
        model: TigerConfig {
            d_ff: 32,
            ..small_run(1).model
        },
        ..small_run(1)
    };
    tiger::train(&ds, &split, &ids, &shape, &other, &mut |_| {}).unwrap();
    let e = tiger::average_checkpoints(&[inputs[0].clone(), other.join("last")], &ds, &out)
        .unwrap_err();
    assert!(
        e.to_string().contains("network configuration differs"),
        "{e}"
    );
    let mut swapped = ids.clone();
    swapped.codes.swap(0, 1);
    swapped
        .save(&three.join("last").join("semantic_ids.json"))
        .unwrap();
    let e = tiger::average_checkpoints(&inputs, &ds, &out).unwrap_err();
    assert!(e.to_string().contains("Semantic-ID table differs"), "{e}");
}

/// The selection step evaluates `best/` and the means of the last kept epochs on
/// validation, writes the averages and `selection.json`, and chooses the highest
/// validation NDCG@10; a window longer than the kept epochs is refused.
#[test]
fn selection_chooses_on_validation_among_best_and_averages() {
    let (ds, split, ids) = lsh_setup();
    let dir = tempfile::tempdir().unwrap();
    let train_dir = dir.path().join("train");
    let cfg = tiger::TigerRunConfig {
        train: TigerTrainConfig {
            keep_every: 1,
            ..small_run(3)
        },
        select: tiger::SelectConfig {
            average_last: vec![2, 3],
        },
        ..Default::default()
    };
    tiger::train(&ds, &split, &ids, &cfg.train, &train_dir, &mut |_| {}).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let sel = tiger::select(&ds, &split, &cfg, &train_dir, &|name, _| {
        let mut s = seen.lock().unwrap();
        if s.last().is_none_or(|l: &String| l != name) {
            s.push(name.to_string());
        }
    })
    .unwrap();
    let names: Vec<&str> = sel.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["best", "mean of last 2", "mean of last 3"]);
    assert_eq!(*seen.lock().unwrap(), names);
    assert_eq!(sel.candidates[1].epochs, [2, 3]);
    assert_eq!(sel.candidates[2].epochs, [1, 2, 3]);
    assert!(train_dir.join("mean-last-2/weights.safetensors").exists());
    assert!(train_dir.join("selection.json").exists());
    let ndcg = |i: usize| sel.candidates[i].valid["NDCG@10"];
    let best = (0..3).fold(0, |b, i| if ndcg(i) > ndcg(b) { i } else { b });
    assert_eq!(sel.chosen, best);
    // Each candidate's validation numbers are those of a plain validation run.
    let opts = EvalOptions {
        stage: Stage::Valid,
        ..cfg.eval.clone()
    };
    let m = tiger::load_checkpoint(&sel.candidates[1].checkpoint, &ds, "cpu").unwrap();
    let v = tiger::eval(&m, &split, &opts, None, &|_| {}).unwrap();
    assert_eq!(v.report.metrics, sel.candidates[1].valid);

    let too_long = tiger::TigerRunConfig {
        select: tiger::SelectConfig {
            average_last: vec![4],
        },
        ..cfg.clone()
    };
    let e = tiger::select(&ds, &split, &too_long, &train_dir, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("4 epochs to average"), "{e}");
    let one = tiger::SelectConfig {
        average_last: vec![1],
    };
    assert!(one.validate(&cfg.train).is_err());
}

/// Selection averages only contiguous kept epochs of this run, up to its `last/`: a
/// missing kept epoch is refused, and leftovers of a longer earlier run are ignored.
#[test]
fn selection_refuses_gaps_and_ignores_leftover_epochs() {
    let (ds, split, ids) = lsh_setup();
    let dir = tempfile::tempdir().unwrap();
    let train_dir = dir.path().join("train");
    let cfg = tiger::TigerRunConfig {
        train: TigerTrainConfig {
            keep_every: 1,
            ..small_run(3)
        },
        select: tiger::SelectConfig {
            average_last: vec![2],
        },
        ..Default::default()
    };
    tiger::train(&ds, &split, &ids, &cfg.train, &train_dir, &mut |_| {}).unwrap();
    // A leftover epoch 7 from an earlier run: ignored, the window is still 2-3.
    let epochs = train_dir.join("epochs");
    copy_dir(&epochs.join("epoch-003"), &epochs.join("epoch-007"));
    let sel = tiger::select(&ds, &split, &cfg, &train_dir, &|_, _| {}).unwrap();
    assert_eq!(sel.candidates[1].epochs, [2, 3]);
    // A hole at epoch 2: refused, naming the gap.
    std::fs::remove_dir_all(epochs.join("epoch-002")).unwrap();
    let e = tiger::select(&ds, &split, &cfg, &train_dir, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
