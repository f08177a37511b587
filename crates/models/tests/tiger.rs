//! RQ-VAE, Semantic-ID artifacts, trie-constrained beam search.

use std::collections::HashSet;

use candle_core::Device;
use llmrec_core::{ItemId, Query, Recommender, Rng};
use llmrec_models::semantic_ids::rqvae::{self, RqVaeTrainConfig};
use llmrec_models::semantic_ids::{self, SEMANTIC_IDS_VERSION, SemanticIds};
use llmrec_models::tiger::{self, EncoderBatch, Tiger, TigerConfig, Vocab};
use llmrec_models::trie::Trie;

/// `clusters` Gaussian blobs in `dim` dimensions; returns (embeddings, labels).
fn blobs(clusters: usize, per: usize, dim: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| 3.0 * rng.normal() as f32).collect())
        .collect();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..clusters * per {
        let c = i % clusters;
        x.push(
            centers[c]
                .iter()
                .map(|&m| m + 0.3 * rng.normal() as f32)
                .collect(),
        );
        y.push(c);
    }
    (x, y)
}

#[test]
fn rqvae_recovers_clusters_in_first_level_codes() {
    let (x, y) = blobs(8, 40, 24, 1);
    let cfg = RqVaeTrainConfig {
        model: rqvae::RqVaeConfig {
            input_dim: 24,
            hidden: vec![32],
            latent_dim: 8,
            levels: 3,
            codebook_size: 8,
            beta: 0.25,
        },
        epochs: 30,
        batch_size: 128,
        lr: 3e-3,
        seed: 3,
        ..Default::default()
    };
    let mut seen = 0;
    let trained = rqvae::train(&x, &cfg, &Device::Cpu, &mut |s| {
        seen += 1;
        assert!(s.loss.is_finite());
    })
    .unwrap();
    assert_eq!(seen, 30);
    // Purity of level-0 codes w.r.t. the true clusters, and the reverse (each cluster
    // mostly in one code).
    let k = 8;
    let mut table = vec![vec![0usize; k]; 8];
    for (c, &label) in trained.codes.iter().zip(&y) {
        table[c[0] as usize][label] += 1;
    }
    let purity = table.iter().map(|r| r.iter().max().unwrap()).sum::<usize>() as f64 / 320.0;
    let inverse = (0..8)
        .map(|l| (0..k).map(|c| table[c][l]).max().unwrap())
        .sum::<usize>() as f64
        / 320.0;
    assert!(
        purity >= 0.9 && inverse >= 0.9,
        "purity {purity}, inverse {inverse}: {table:?}"
    );
    let r = &trained.report;
    assert!(r.usage.iter().all(|&u| u >= 0.8), "usage {:?}", r.usage);
    assert!(!r.failed);
    let ids = trained.semantic_ids().unwrap();
    ids.validate().unwrap();
    assert_eq!(ids.depth(), 4);
    // Reproducible from the seed.
    let again = rqvae::train(&x, &cfg, &Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(again.codes, trained.codes);
}

#[test]
fn rq_kmeans_codes_pairs_then_members() {
    // Two far-apart pairs on a line: level 0 must split the pairs, level 1 (on the
    // residuals, +-half a pair's spread) must split each pair the same way.
    let x = vec![vec![0.0f32], vec![0.1], vec![10.0], vec![10.1]];
    let ids = semantic_ids::rq_kmeans_ids(&x, 2, 2, 10, 5).unwrap();
    ids.validate().unwrap();
    let c = &ids.codes;
    assert_eq!(c[0][0], c[1][0]);
    assert_eq!(c[2][0], c[3][0]);
    assert_ne!(c[0][0], c[2][0]);
    assert_eq!(c[0][1], c[2][1]);
    assert_eq!(c[1][1], c[3][1]);
    assert_ne!(c[0][1], c[1][1]);
    assert_eq!(ids.collision_rate, 0.0);
    assert!(c.iter().all(|t| t[2] == 0));
    assert_eq!(ids.scheme.label(), "rq-kmeans");
}

#[test]
fn rq_kmeans_recovers_clusters_in_first_level_codes() {
    let (x, y) = blobs(8, 40, 24, 1);
    let ids = semantic_ids::rq_kmeans_ids(&x, 3, 8, 25, 3).unwrap();
    ids.validate().unwrap();
    assert_eq!(ids.depth(), 4);
    let mut table = vec![vec![0usize; 8]; 8];
    for (c, &label) in ids.codes.iter().zip(&y) {
        table[c[0] as usize][label] += 1;
    }
    // Each code holds one cluster and each cluster one code.
    for row in &table {
        assert_eq!(row.iter().filter(|&&n| n > 0).count(), 1, "{table:?}");
    }
    assert!(ids.usage.iter().all(|&u| u >= 0.8), "usage {:?}", ids.usage);
    // Deeper levels split the clusters: far fewer than 40 items share a 3-code prefix.
    assert!(
        ids.collision_size < 10,
        "collision size {}",
        ids.collision_size
    );
    assert_eq!(ids, semantic_ids::rq_kmeans_ids(&x, 3, 8, 25, 3).unwrap());
    assert!(semantic_ids::rq_kmeans_ids(&x, 3, 8, 0, 3).is_err());
}

#[test]
fn rqvae_flags_collapse() {
    // Every item identical: one code per level at most, far below 80% usage.
    let x = vec![vec![0.5f32; 8]; 64];
    let cfg = RqVaeTrainConfig {
        model: rqvae::RqVaeConfig {
            input_dim: 8,
            hidden: vec![16],
            latent_dim: 4,
            levels: 2,
            codebook_size: 16,
            beta: 0.25,
        },
        epochs: 2,
        batch_size: 64,
        ..Default::default()
    };
    let t = rqvae::train(&x, &cfg, &Device::Cpu, &mut |_| {}).unwrap();
    assert!(t.report.failed, "{:?}", t.report.usage);
    assert!(
        t.report
            .failure
            .as_deref()
            .unwrap_or("")
            .contains("collapse")
    );
    // Wrong input dimension is a config error.
    let bad = RqVaeTrainConfig {
        model: rqvae::RqVaeConfig {
            input_dim: 9,
            ..cfg.model.clone()
        },
        ..cfg
    };
    assert!(rqvae::train(&x, &bad, &Device::Cpu, &mut |_| {}).is_err());
}

#[test]
fn semantic_id_artifact_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.json");
    let ids = semantic_ids::random_ids(100, 3, 4, 9).unwrap();
    assert!(
        ids.collision_size > 1,
        "100 items in 64 tuples must collide"
    );
    ids.save(&path).unwrap();
    assert_eq!(SemanticIds::load(&path).unwrap(), ids);

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let e = SemanticIds::load(&path).unwrap_err().to_string();
    assert!(e.contains("not a valid Semantic-ID JSON"), "{e}");

    let wrong = text.replacen(
        &format!("\"format_version\":{SEMANTIC_IDS_VERSION}"),
        "\"format_version\":999",
        1,
    );
    std::fs::write(&path, wrong).unwrap();
    let e = SemanticIds::load(&path).unwrap_err().to_string();
    assert!(e.contains("version 999 is not supported"), "{e}");

    // Duplicate IDs are refused.
    let mut dup = ids.clone();
    dup.codes[1] = dup.codes[0].clone();
    dup.save(&path).unwrap();
    let e = SemanticIds::load(&path).unwrap_err().to_string();
    assert!(e.contains("share the id"), "{e}");
}

fn tiny() -> TigerConfig {
    TigerConfig {
        d_model: 16,
        heads: 2,
        head_dim: 8,
        d_ff: 32,
        encoder_layers: 1,
        decoder_layers: 2,
        dropout: 0.0,
        max_history: 5,
        user_buckets: 10,
        layer_norm_eps: 1e-6,
        tie_embeddings: false,
    }
}

#[test]
fn beam_search_returns_distinct_valid_items_in_descending_score() {
    let ids = semantic_ids::random_ids(60, 3, 8, 5).unwrap();
    let vocab = Vocab::new(&ids, 10);
    let (model, _vars) = tiger::new_model(&tiny(), &vocab, 1, &Device::Cpu).unwrap();
    let mut rec = Tiger::new(model, &ids).unwrap();
    rec.beam_size = 12;
    let hist: Vec<Vec<ItemId>> = vec![vec![1, 2, 3], vec![], vec![59, 0, 7, 8, 9, 10, 11]];
    let queries: Vec<Query<'_>> = hist
        .iter()
        .enumerate()
        .map(|(u, h)| {
            if u == 1 {
                Query::anonymous(h)
            } else {
                Query::new(u as u32, h)
            }
        })
        .collect();
    let beams = rec.search(&queries).unwrap();
    for b in &beams {
        assert_eq!(b.len(), 12);
        let items: HashSet<_> = b.iter().map(|x| x.item.unwrap()).collect();
        assert_eq!(items.len(), 12, "distinct");
        for x in b {
            assert_eq!(ids.codes[x.item.unwrap() as usize], x.codes, "valid");
            assert!(x.log_prob.is_finite() && x.log_prob <= 0.0);
        }
        assert!(
            b.windows(2).all(|w| w[0].log_prob >= w[1].log_prob),
            "descending"
        );
    }
    // The Recommender view agrees with the beams.
    let mut out = vec![0f32; 3 * 60];
    rec.score_batch(&queries, &mut out).unwrap();
    for (row, b) in out.chunks(60).zip(&beams) {
        let top = llmrec_core::topk::top_k(row, 12);
        let want: Vec<ItemId> = b.iter().map(|x| x.item.unwrap()).collect();
        assert_eq!(top, want);
        assert_eq!(
            row.iter().filter(|&&s| s == tiger::OUTSIDE_BEAM).count(),
            48
        );
    }
    // Constraints on: no invalid IDs. Off: some (8^3 = 512 tuples, 60 items).
    assert_eq!(rec.invalid_rate(&queries, 10).unwrap(), 0.0);
    rec.constrained = false;
    assert!(rec.invalid_rate(&queries, 10).unwrap() > 0.0);
    // Beam search on a one-row batch gives the same as in a batch (padding is masked).
    rec.constrained = true;
    let single = rec.search(&queries[2..]).unwrap();
    for (a, b) in single[0].iter().zip(&beams[2]) {
        assert_eq!(a.item, b.item);
        assert!((a.log_prob - b.log_prob).abs() < 1e-4);
    }
}

#[test]
fn beams_that_skip_history_are_the_full_ranking_without_it() {
    let ids = semantic_ids::random_ids(60, 3, 8, 5).unwrap();
    let vocab = Vocab::new(&ids, 10);
    let (model, _vars) = tiger::new_model(&tiny(), &vocab, 1, &Device::Cpu).unwrap();
    let mut rec = Tiger::new(model, &ids).unwrap();
    let hist: Vec<Vec<ItemId>> = vec![vec![1, 2, 3, 2], vec![], (0..40).collect()];
    let queries: Vec<Query<'_>> = hist
        .iter()
        .enumerate()
        .map(|(u, h)| Query::new(u as u32, h))
        .collect();
    // 60 beams over 60 items is exhaustive: every item gets its exact log-probability.
    rec.beam_size = 60;
    let all = rec.search(&queries).unwrap();
    rec.exclude_history = true;
    let skipping = rec.search(&queries).unwrap();
    for ((a, s), h) in all.iter().zip(&skipping).zip(&hist) {
        assert_eq!(a.len(), 60);
        let want: Vec<(ItemId, f32)> = a
            .iter()
            .map(|x| (x.item.unwrap(), x.log_prob))
            .filter(|(i, _)| !h.contains(i))
            .collect();
        let got: Vec<(ItemId, f32)> = s.iter().map(|x| (x.item.unwrap(), x.log_prob)).collect();
        assert_eq!(got.len(), want.len());
        for ((gi, gs), (wi, ws)) in got.iter().zip(&want) {
            assert_eq!(gi, wi);
            assert!((gs - ws).abs() < 1e-5, "{gs} vs {ws}");
        }
    }
    // A narrow beam never holds a history item, and still fills up with other items.
    rec.beam_size = 12;
    for b in rec.search(&queries).unwrap().iter().zip(&hist) {
        assert_eq!(b.0.len(), 12);
        assert!(b.0.iter().all(|x| !b.1.contains(&x.item.unwrap())));
    }
    // Off (the default), history items do take beams for the long history.
    rec.exclude_history = false;
    let narrow = rec.search(&queries[2..]).unwrap();
    assert!(narrow[0].iter().any(|x| hist[2].contains(&x.item.unwrap())));
}

#[test]
fn trie_matches_table_and_encoder_batch_pads_left() {
    let ids = semantic_ids::random_ids(30, 3, 4, 2).unwrap();
    let trie = Trie::new(&ids.codes).unwrap();
    for (i, c) in ids.codes.iter().enumerate() {
        assert_eq!(trie.lookup(c), Some(i as ItemId));
    }
    let vocab = Vocab::new(&ids, 10);
    let rows: Vec<(Option<u32>, &[ItemId])> = vec![(Some(0), &[1, 2][..]), (None, &[3][..])];
    let b = EncoderBatch::new(&rows, &ids.codes, &vocab, 20, &Device::Cpu).unwrap();
    assert_eq!(b.len, 9);
    let t = b.ids.to_vec2::<u32>().unwrap();
    assert_eq!(t[1][..5], [0, 0, 0, 0, 0]);
    assert!(t[0][0] as usize >= vocab.n_output(), "user token first");
    assert!(EncoderBatch::new(&[(None, &[99][..])], &ids.codes, &vocab, 20, &Device::Cpu).is_err());
}

/// The fused CPU kernels (LayerNorm, dense, dropout, the attention core, the loss) give
/// the same loss, gradients and beams as candle's primitive ops.
#[test]
fn fused_kernels_match_candle_ops() {
    fused_matches_candle(false);
}

/// The same with tied embeddings: no head weights, and the logits come from the
/// embedding table, which gets the head's gradient as well.
#[test]
fn fused_kernels_match_candle_ops_with_tied_embeddings() {
    fused_matches_candle(true);
}

fn fused_matches_candle(tie: bool) {
    let ids = semantic_ids::random_ids(40, 3, 6, 9).unwrap();
    let vocab = Vocab::new(&ids, 10);
    let cfg = TigerConfig {
        tie_embeddings: tie,
        ..tiny()
    };
    let (mut model, vars) = tiger::new_model(&cfg, &vocab, 3, &Device::Cpu).unwrap();
    let names: Vec<String> = vars.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(
        names.iter().any(|n| n.starts_with("head")),
        !tie,
        "{names:?}"
    );
    // Histories of different lengths, so encoder rows are padded differently.
    let hists: Vec<Vec<ItemId>> = vec![
        vec![1, 2, 3, 4, 5, 6],
        vec![7],
        vec![8, 9],
        vec![10, 11, 12],
    ];
    let examples: Vec<(Option<u32>, &[ItemId], ItemId)> = hists
        .iter()
        .enumerate()
        .map(|(u, h)| (Some(u as u32), &h[..], (u * 7 + 3) as ItemId))
        .collect();
    let batch = tiger::TrainBatch::new(&examples, &ids.codes, &vocab, 5, &Device::Cpu).unwrap();
    let mut runs = Vec::new();
    for fused in [true, false] {
        model.set_fused(fused);
        let loss = model.loss(&batch, None).unwrap();
        let grads = loss.backward().unwrap();
        let mut g: Vec<(String, Vec<f32>)> = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| {
                let gv = grads.get(var).expect("every weight gets a gradient");
                (
                    name.clone(),
                    gv.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        runs.push((loss.to_scalar::<f32>().unwrap(), g));
    }
    let (fused, reference) = (&runs[0], &runs[1]);
    assert!(
        (fused.0 - reference.0).abs() < 1e-5,
        "loss {} vs {}",
        fused.0,
        reference.0
    );
    for ((name, a), (_, b)) in fused.1.iter().zip(&reference.1) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "{name}: max diff {diff} at scale {scale}"
        );
    }
    // Beam search (cached decoding, cross-attention over padded keys) agrees as well.
    let queries: Vec<Query<'_>> = hists
        .iter()
        .enumerate()
        .map(|(u, h)| Query::new(u as u32, h))
        .collect();
    let mut beams = Vec::new();
    for fused in [true, false] {
        model.set_fused(fused);
        let mut rec = Tiger::new(model.clone(), &ids).unwrap();
        rec.beam_size = 8;
        beams.push(rec.search(&queries).unwrap());
    }
    assert_eq!(beams[0].iter().flatten().count(), 4 * 8);
    assert_eq!(beams[1].iter().flatten().count(), 4 * 8);
    for (a, b) in beams[0].iter().flatten().zip(beams[1].iter().flatten()) {
        assert_eq!(a.item, b.item);
        assert!(
            (a.log_prob - b.log_prob).abs() < 1e-4,
            "{} vs {}",
            a.log_prob,
            b.log_prob
        );
    }
}
