//! Gemma 3 270M (Q4_K_M GGUF, fetched by `scripts/fetch-models.sh`) in the local
//! backend, against transformers on the same file: the SentencePiece tokenizer id for
//! id, and the logits of a short prompt and of one longer than the 512-token sliding
//! window (`tests/fixtures/gemma3_reference.json`, written by
//! `scripts/reference/gemma3_reference.py`). candle-transformers' `quantized_gemma3`
//! is no reference here: it gates the MLP with SiLU where Gemma 3 uses GELU, and its
//! decoding steps ignore the window.

use std::sync::OnceLock;

use llmrec_llm::{KvCache, LocalConfig, LocalLlm, Message};
use serde_json::Value;

fn llm() -> Option<&'static LocalLlm> {
    let p = llmrec_testkit::gemma3_path()?;
    static M: OnceLock<LocalLlm> = OnceLock::new();
    Some(M.get_or_init(|| LocalLlm::load(&p, LocalConfig::default()).expect("load Gemma 3")))
}

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gemma3_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture")).expect("fixture json")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tokenizer_matches_transformers() {
    let Some(m) = llm() else { return };
    let f = fixture();
    for t in f["texts"].as_array().expect("texts") {
        let text = t["text"].as_str().expect("text");
        assert_eq!(m.encode(text).unwrap(), ids_of(&t["ids"]), "{text:?}");
        assert_eq!(m.decode(&ids_of(&t["ids"])).unwrap(), text);
    }
    for p in f["prompts"].as_array().expect("prompts") {
        let text = p["text"].as_str().expect("text");
        assert_eq!(m.encode(text).unwrap(), ids_of(&p["ids"]));
    }
}

/// Every row's logits for `ids` in one pass (the exact f32 path).
fn all_logits(m: &LocalLlm, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::default();
    let l = m.forward(ids, &mut cache, true, true).unwrap();
    l.to_vec2::<f32>().unwrap()
}

/// [`all_logits`] of the fixture's long prompt, computed once for the tests that
/// read it.
fn long_logits(m: &LocalLlm) -> &'static [Vec<f32>] {
    static L: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    L.get_or_init(|| all_logits(m, &ids_of(&fixture()["prompts"][1]["ids"])))
}

fn logsumexp(row: &[f32]) -> f64 {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln()
}

#[test]
fn logits_match_transformers_inside_and_beyond_the_window() {
    let Some(m) = llm() else { return };
    let f = fixture();
    let mut beyond = 0;
    for (i, p) in f["prompts"].as_array().expect("prompts").iter().enumerate() {
        let ids = ids_of(&p["ids"]);
        let short;
        let ours: &[Vec<f32>] = if i == 1 {
            long_logits(m)
        } else {
            short = all_logits(m, &ids);
            &short
        };
        for r in p["rows"].as_array().expect("rows") {
            let pos = r["position"].as_u64().expect("position") as usize;
            beyond += usize::from(pos >= 512);
            let row = &ours[pos];
            let top = ids_of(&r["top_ids"]);
            let want: Vec<f64> = r["top_logits"]
                .as_array()
                .expect("top")
                .iter()
                .map(|x| x.as_f64().expect("logit"))
                .collect();
            for (&id, &w) in top.iter().zip(&want) {
                let got = row[id as usize] as f64;
                assert!(
                    (got - w).abs() < 2e-2 * w.abs().max(1.0),
                    "position {pos}, token {id}: {got} vs {w}"
                );
            }
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            assert_eq!(best as u32, top[0], "argmax at position {pos}");
            let lse = r["logsumexp"].as_f64().expect("lse");
            assert!((logsumexp(row) - lse).abs() < 2e-2 * lse.abs().max(1.0));
        }
    }
    assert!(beyond >= 2, "the fixture must reach past the window");
}

#[test]
fn decoding_steps_match_the_prompt_pass_past_the_window() {
    let Some(m) = llm() else { return };
    let f = fixture();
    let ids = ids_of(&f["prompts"][1]["ids"]);
    assert!(ids.len() > 530, "the long prompt crosses the window");
    let full = long_logits(m);
    // A prompt pass up to 508, then single steps across position 512; beside it, two
    // sequences four positions apart step together.
    let mut a = KvCache::default();
    m.forward(&ids[..508], &mut a, false, true).unwrap();
    let mut pair = [a.clone(), KvCache::default()];
    let near = |got: &[f32], pos: usize, what: &str| {
        let d = got
            .iter()
            .zip(&full[pos])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-2, "{what} at position {pos}: differs by {d}");
    };
    for pos in 508..520 {
        let step = m.forward(&ids[pos..=pos], &mut a, false, false).unwrap();
        near(
            &step.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            pos,
            "one step",
        );
        if pos == 511 {
            pair[1] = a.clone();
        }
        if pos >= 512 {
            let toks = [ids[pos - 4], ids[pos]];
            let both = m.decode_step_batch(&toks, &mut pair).unwrap();
            let both = both.to_vec2::<f32>().unwrap();
            near(&both[0], pos - 4, "batched step");
            near(&both[1], pos, "batched step");
        }
    }
}

#[test]
fn gemma_chat_turns() {
    let Some(m) = llm() else { return };
    let msgs = [
        Message::system("You recommend movies."),
        Message::user("I liked Heat (1995)."),
    ];
    let t = m.render_chat(&msgs, true);
    assert_eq!(
        t,
        "<bos><start_of_turn>user\nYou recommend movies.\n\nI liked Heat (1995).<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    let ids = m.encode(&t).unwrap();
    assert_eq!(ids[0], 2, "<bos>");
    assert_eq!(ids[1], 105, "<start_of_turn>");
}
