//! Embedding parity with sentence-transformers (fixture made by
//! `scripts/make_embedding_fixture.py`).

use llmrec_llm::embedder::cpu_kernels;
use llmrec_llm::{Embedder, cosine};

fn load() -> Option<Embedder> {
    let dir = llmrec_testkit::minilm_dir()?;
    Some(Embedder::minilm(Some(&dir)).expect("load MiniLM"))
}

#[test]
fn parity_with_sentence_transformers() {
    let Some(emb) = load() else { return };
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minilm_fixture.json")).unwrap();
    let items = fixture["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let ids = emb.tokenize(&texts).unwrap();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            ids[i].len() as u64,
            item["n_tokens"].as_u64().unwrap(),
            "tokens of {:?}",
            texts[i]
        );
    }
    // Every kernel this CPU has runs, and each setting must pick the kernel the CPU
    // allows; a kernel this CPU lacks is reported as not exercised (or fails the test
    // when LLMREC_REQUIRE_CPU names it).
    let have = cpu_kernels();
    let amx = llmrec_testkit::cpu_feature("amx", have.contains(&"amx"));
    let avx512 = llmrec_testkit::cpu_feature("avx512", have.contains(&"avx512"));
    let dir = llmrec_testkit::minilm_dir().unwrap();
    let mut exercised = Vec::new();
    // Small batches so that several buckets and paddings are exercised.
    let (mut worst_cos, mut worst_diff) = (1f32, 0f32);
    for (bs, fast, use_amx) in [
        (1, true, true),
        (3, true, true),
        (32, true, true),
        (3, true, false),
        (32, true, false),
        (3, false, false),
        (32, false, false),
    ] {
        let e = Embedder::minilm(Some(&dir))
            .unwrap()
            .with_batch_size(bs)
            .with_fast_path(fast)
            .with_amx(use_amx);
        let kernel = match (fast, use_amx) {
            (true, true) if amx => "amx",
            (true, _) if avx512 => "avx512",
            _ => "candle",
        };
        assert_eq!(e.kernel(), kernel, "fast {fast} amx {use_amx}");
        if !exercised.contains(&kernel) {
            exercised.push(kernel);
        }
        let got = e.embed(&texts).unwrap();
        for (i, item) in items.iter().enumerate() {
            let want: Vec<f32> = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got[i].len(), want.len());
            let c = cosine(&got[i], &want);
            let maxdiff = got[i]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst_cos = worst_cos.min(c);
            worst_diff = worst_diff.max(maxdiff);
            assert!(
                c >= 0.9999,
                "batch {bs} kernel {kernel}, {:?}: cosine {c}",
                texts[i]
            );
            assert!(
                maxdiff <= 1e-4,
                "batch {bs} kernel {kernel}, {:?}: max abs diff {maxdiff}",
                texts[i]
            );
        }
    }
    let mut all_available = have.clone();
    all_available.sort();
    exercised.sort();
    assert_eq!(
        exercised, all_available,
        "every kernel this CPU has must run"
    );
    llmrec_testkit::note(&format!(
        "embedder parity with sentence-transformers: kernels {} exercised; worst cosine {worst_cos}, worst max abs diff {worst_diff}",
        exercised.join(", ")
    ));
    let _ = emb;
}

#[test]
fn embed_items_uses_cache_and_artifact_round_trips() {
    let Some(emb) = load() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cache = llmrec_llm::Cache::open(tmp.path().join("cache.redb")).unwrap();
    let texts: Vec<String> = [
        "Heat (1995) (Action, Crime, Thriller)",
        "Casino (1995) (Drama, Thriller)",
        "Heat (1995) (Action, Crime, Thriller)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let direct = emb
        .embed(&texts.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let first = llmrec_llm::embed_items(&emb, &texts, Some(&cache)).unwrap();
    for (a, b) in first.iter().zip(&direct) {
        assert!(cosine(a, b) > 0.99999);
    }
    // A planted cache entry is returned as is: the cache is consulted, not the model.
    let planted = vec![0.5f32; emb.dim()];
    cache
        .put_embeddings(emb.model_id(), &[(texts[1].as_str(), planted.as_slice())])
        .unwrap();
    let second = llmrec_llm::embed_items(&emb, &texts, Some(&cache)).unwrap();
    assert_eq!(second[1], planted);
    assert_eq!(second[0], first[0]);

    let p = tmp.path().join("emb/items.llmrec-emb");
    llmrec_llm::write_embeddings(&p, emb.model_id(), &texts, &first).unwrap();
    let t = llmrec_llm::read_embeddings(&p).unwrap();
    assert_eq!((t.len(), t.dim), (3, 384));
    assert_eq!(t.row(2), first[2].as_slice());
    t.check_matches(&p, emb.model_id(), &texts).unwrap();
}
