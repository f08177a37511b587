//! LLM-Rec's content MLP on synthetic data where only the "augmented" text knows
//! each item's cluster: with it, the MLP must rank better than without.

use std::sync::atomic::{AtomicUsize, Ordering};

use llmrec_core::{Error, EvalConfig, Result, Rng, SequenceSplit, UserSplit};
use llmrec_llm::{Cache, Generation, Llm, LlmContext, LogProb, Message, SamplingParams};
use llmrec_models::content_mlp::ContentMlpConfig;
use llmrec_pipelines::llm_rec::augment::{AugmentConfig, generate, read_artifact};
use llmrec_pipelines::llm_rec::engagement::EngagementConfig;
use llmrec_pipelines::llm_rec::prompts::{PromptKind, Strategy};
use llmrec_pipelines::llm_rec::train::{MlpRun, MlpTrainConfig, train_mlp};

const ITEMS: usize = 80;
const CLUSTERS: usize = 4;

/// Every user draws 10 distinct items from one cluster (user mod 4), in a seeded
/// order; the last is test, the one before validation.
fn split() -> SequenceSplit {
    let mut rng = Rng::new(5);
    let users = (0..160)
        .map(|u| {
            let c = u % CLUSTERS;
            let mut pool: Vec<u32> = (0..ITEMS as u32)
                .filter(|i| *i as usize % CLUSTERS == c)
                .collect();
            rng.shuffle(&mut pool);
            pool.truncate(10);
            UserSplit {
                train: pool[..8].to_vec(),
                valid: vec![pool[8]],
                test: vec![pool[9]],
            }
        })
        .collect();
    SequenceSplit {
        name: "leave-one-out".into(),
        n_items: ITEMS,
        users,
    }
}

/// `original`: 2 random values per item, no cluster; `augmented`: the cluster as a
/// one-hot vector with a little noise.
fn features(with_cluster: bool) -> (Vec<f32>, usize) {
    let mut rng = Rng::new(9);
    let width = if with_cluster { 2 + CLUSTERS } else { 2 };
    let mut out = Vec::new();
    for i in 0..ITEMS {
        out.push(rng.normal() as f32);
        out.push(rng.normal() as f32);
        if with_cluster {
            for c in 0..CLUSTERS {
                let hot = if i % CLUSTERS == c { 1.0 } else { 0.0 };
                out.push(hot + 0.05 * rng.normal() as f32);
            }
        }
    }
    (out, width)
}

#[test]
fn augmented_text_that_knows_the_cluster_beats_the_original_alone() {
    let split = split();
    let model = ContentMlpConfig {
        dim: 8,
        hidden: vec![16],
    };
    let train = MlpTrainConfig {
        lr: 0.01,
        batch: 128,
        negatives: 4,
        epochs: 12,
        patience: 12,
        ..Default::default()
    };
    let eval = EvalConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let mut ndcg = Vec::new();
    for (k, with) in [false, true].into_iter().enumerate() {
        let (f, width) = features(with);
        let run = MlpRun {
            model: &model,
            train: &train,
            eval: &eval,
            features: &f,
            width,
            row: if with { "augmented" } else { "original" },
            seed: 1,
        };
        let r = train_mlp(
            &run,
            &split,
            &dir.path().join(format!("run{k}")),
            &mut |_| {},
        )
        .unwrap();
        assert!(r.best_epoch >= 1);
        ndcg.push(r.test.get("NDCG@10").unwrap());
    }
    // 20 items per cluster, 8 seen: a model that knows the cluster ranks the 12
    // unseen items of the user's cluster first (NDCG@10 at most about 0.41); without the
    // cluster, two random values per item carry little.
    assert!(
        ndcg[1] > ndcg[0] + 0.1 && ndcg[1] > 0.2,
        "with cluster {:.3}, without {:.3}",
        ndcg[1],
        ndcg[0]
    );
}

/// Answers every prompt with its first characters; fails every call after
/// `budget` calls (a run cut off part way).
struct Cutoff {
    budget: usize,
    calls: AtomicUsize,
}

impl Llm for Cutoff {
    fn backend(&self) -> &str {
        "test"
    }
    fn model(&self) -> &str {
        "echo"
    }
    fn chat(&self, m: &[Message], _p: &SamplingParams) -> Result<Generation> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.budget {
            return Err(Error::Invalid("cut off".into()));
        }
        Ok(Generation {
            text: format!("echo: {}", &m[0].content[..30.min(m[0].content.len())]),
            prompt_tokens: 40,
            completion_tokens: 3,
            latency_ms: 0.0,
            finish: llmrec_llm::FinishReason::Stop,
        })
    }
    fn score_continuations(&self, _m: &[Message], _c: &[String]) -> Result<Vec<LogProb>> {
        Err(Error::Invalid("not used".into()))
    }
    fn generate_constrained(&self, _m: &[Message], _a: &[String]) -> Result<String> {
        Err(Error::Invalid("not used".into()))
    }
}

#[test]
fn augmentation_covers_every_prompt_and_resumes_after_a_cut_off() {
    let ds = llmrec_data::synthetic::two_blocks(12, 10, 5, 3);
    let split = llmrec_data::split::leave_one_out(&ds);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.redb")).unwrap();
    let cfg = AugmentConfig {
        group: 1,
        ..AugmentConfig::default()
    };
    let eng = EngagementConfig::default();
    let cut = Cutoff {
        budget: 30,
        calls: AtomicUsize::new(0),
    };
    let ctx = LlmContext {
        llm: &cut,
        cache: &cache,
    };
    let (_, first) = generate(
        ctx,
        &ds,
        &split,
        (&cfg, &eng),
        dir.path(),
        &mut |_| {},
        &|_| {},
    )
    .unwrap();
    assert_eq!((first.records, first.failed), (30, 80 - 30));
    let full = Cutoff {
        budget: usize::MAX,
        calls: AtomicUsize::new(0),
    };
    let ctx = LlmContext {
        llm: &full,
        cache: &cache,
    };
    let (art, second) = generate(
        ctx,
        &ds,
        &split,
        (&cfg, &eng),
        dir.path(),
        &mut |_| {},
        &|_| {},
    )
    .unwrap();
    assert_eq!((second.records, second.failed, second.cached), (80, 0, 30));
    assert_eq!(
        full.calls.load(Ordering::SeqCst),
        50,
        "only the missing prompts ran"
    );
    assert_eq!(second.completion_tokens, 80 * 3);
    assert_eq!(second.completion_tokens_by_strategy["basic"], 10 * 3 * 3);
    assert_eq!(second.completion_tokens_by_strategy["eng"], 10 * 3);
    let (_, texts) = read_artifact(&art, &ds).unwrap();
    let kinds: Vec<PromptKind> = Strategy::ALL
        .iter()
        .flat_map(|s| s.prompts().iter().copied())
        .collect();
    assert_eq!(texts.len(), 8);
    for k in kinds {
        assert!(
            texts[&k]
                .iter()
                .all(|t| t.as_ref().is_some_and(|t| t.starts_with("echo: ")))
        );
    }
    // Each item's neighbours stay in its own block (training co-engagement only).
    let nb: Vec<serde_json::Value> = std::fs::read_to_string(art.join("neighbors.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &nb {
        let block = |raw: &str| raw[1..].parse::<usize>().unwrap() / 5;
        let item = r["item"].as_str().unwrap();
        for n in r["neighbors"].as_array().unwrap() {
            let n = n.as_str().unwrap();
            assert_ne!(n, item);
            assert_eq!(block(n), block(item), "{item} -> {n}");
        }
    }
    // Another dataset's artifact is refused.
    let other = llmrec_data::synthetic::two_blocks(12, 10, 5, 4);
    let e = read_artifact(&art, &other).unwrap_err().to_string();
    assert!(e.contains("made for dataset"), "{e}");
}
