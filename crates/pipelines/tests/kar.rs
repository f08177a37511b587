//! KAR: the protocol on the real MovieLens 1M table (no CTR target in a user's
//! prompt, the click rate the issue states), a synthetic CTR task where only a
//! knowledge vector reveals a hidden user trait (each backbone learns it with the
//! vector and cannot without), and knowledge generation that resumes after a
//! cut-off run without losing or repeating a record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::{ExplicitRatings, Movie, Rated, UserProfile, load_ml1m_explicit};
use llmrec_llm::{Cache, Generation, Llm, LlmContext, LogProb, Message, SamplingParams};
use llmrec_models::ctr::{AdaptorConfig, Backbone, CtrConfig};
use llmrec_pipelines::kar::knowledge::{Kind, KnowledgeConfig, generate, read_records};
use llmrec_pipelines::kar::protocol::{CtrSample, HISTORY, ProtocolConfig, build};
use llmrec_pipelines::kar::train::{Catalog, CtrRun, TrainConfig, train_one};
use llmrec_pipelines::kar::vectors::{Side, Tower};

#[test]
fn ml1m_protocol_keeps_targets_out_of_prompts() {
    let Some(dir) = llmrec_testkit::dataset_path("ml-1m") else {
        return;
    };
    let data = load_ml1m_explicit(&dir).unwrap();
    let kar = build(&data, &ProtocolConfig::default()).unwrap();
    assert_eq!(kar.prompt.len(), 6_040);
    let prompt_ratings: usize = kar.prompt.values().map(Vec::len).sum();
    assert_eq!(prompt_ratings + kar.samples(), 999_611);
    assert_eq!(
        [
            kar.train.users.len(),
            kar.valid.users.len(),
            kar.test.users.len()
        ],
        [4_832, 604, 604]
    );
    // About 57.5% of ratings are 4 stars or more; the samples are close to that.
    let pos = kar.positive_share();
    assert!((0.55..0.60).contains(&pos), "{pos}");
    for part in [&kar.train, &kar.valid, &kar.test] {
        for s in &part.samples {
            let p = &kar.prompt[&s.user];
            assert!(p.iter().all(|r| r.movie != s.movie), "user {}", s.user);
            assert!(p.len() <= 30);
        }
    }
    let users: Vec<HashSet<u32>> = [&kar.train, &kar.valid, &kar.test]
        .iter()
        .map(|p| p.users.iter().copied().collect())
        .collect();
    assert!(users[0].is_disjoint(&users[1]) && users[0].is_disjoint(&users[2]));
    assert!(users[1].is_disjoint(&users[2]));
}

/// Users with a hidden trait (0 or 1); movies of a hidden type; a click when they
/// match (10% of labels flipped). History and genre say nothing of either.
fn synthetic(
    users: u32,
    per_user: usize,
    seed: u64,
) -> (Vec<CtrSample>, HashMap<u32, u32>, HashMap<u32, Movie>) {
    let mut rng = Rng::new(seed);
    let movies: HashMap<u32, Movie> = (1..=40u32)
        .map(|m| {
            (
                m,
                Movie {
                    title: format!("M{m} (2000)"),
                    genres: vec![["Drama", "Comedy"][rng.index(2)].to_string()],
                },
            )
        })
        .collect();
    let trait_of: HashMap<u32, u32> = (1..=users).map(|u| (u, rng.index(2) as u32)).collect();
    let mut samples = Vec::new();
    for u in 1..=users {
        for _ in 0..per_user {
            let m = 1 + rng.index(40) as u32;
            let mut label = (m % 2 == trait_of[&u]) as u32;
            if rng.next_f64() < 0.1 {
                label = 1 - label;
            }
            let mut hist_movies = [0u32; HISTORY];
            let mut hist_stars = [0u8; HISTORY];
            for k in 0..HISTORY {
                hist_movies[k] = 1 + rng.index(40) as u32;
                hist_stars[k] = 1 + rng.index(5) as u8;
            }
            samples.push(CtrSample {
                user: u,
                movie: m,
                label: label as f32,
                hist_movies,
                hist_stars,
            });
        }
    }
    (samples, trait_of, movies)
}

#[test]
fn each_backbone_learns_a_trait_only_knowledge_reveals() {
    let (samples, trait_of, movies) = synthetic(300, 20, 11);
    let split = |lo: u32, hi: u32| -> Vec<CtrSample> {
        samples
            .iter()
            .copied()
            .filter(|s| s.user >= lo && s.user <= hi)
            .collect()
    };
    let (train, valid, test) = (split(1, 240), split(241, 270), split(271, 300));
    let catalog = Catalog::new(&movies, 1..=300);
    // The knowledge: the trait as a one-hot, plus noise, 8 wide.
    let mut rng = Rng::new(5);
    let vectors: HashMap<u32, Vec<f32>> = (1..=300u32)
        .map(|u| {
            let t = trait_of[&u];
            let mut v: Vec<f32> = (0..8).map(|_| 0.3 * rng.normal() as f32).collect();
            v[t as usize] += 1.0;
            (u, v)
        })
        .collect();
    let with = catalog
        .tables(&[Tower {
            side: Side::User,
            vectors,
        }])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let train_cfg = TrainConfig {
        lr: 3e-3,
        batch: 128,
        epochs: 6,
        patience: 6,
        ..TrainConfig::default()
    };
    for backbone in Backbone::ALL {
        let model = CtrConfig {
            backbone,
            items: catalog.items(),
            genres: catalog.genres.len(),
            ratings: 5,
            emb: 8,
            mlp: vec![32, 16],
            cross_layers: 2,
            attention_hidden: 16,
            adaptor: AdaptorConfig {
                shared: 1,
                dedicated: 2,
                hidden: 16,
            },
        };
        let mut auc = Vec::new();
        for (name, tables) in [("none", &[][..]), ("user", &with[..])] {
            let run = CtrRun {
                model: &model,
                train: &train_cfg,
                catalog: &catalog,
                tables,
                knowledge: name,
                seed: 3,
            };
            let out = dir.path().join(format!("{}-{name}", backbone.name()));
            let r = train_one(&run, &train, &valid, &test, &out, &mut |_| {}).unwrap();
            assert!(out.join("best").join("checkpoint.json").exists());
            auc.push(r.test.auc);
        }
        let (without, with_k) = (auc[0], auc[1]);
        eprintln!(
            "{}: test AUC without {without:.4}, with {with_k:.4}",
            backbone.name()
        );
        assert!(
            without < 0.62,
            "{}: AUC without knowledge {without}",
            backbone.name()
        );
        assert!(
            with_k > 0.75,
            "{}: AUC with knowledge {with_k}",
            backbone.name()
        );
        assert!(
            with_k - without > 0.2,
            "{}: {without} → {with_k}",
            backbone.name()
        );
    }
}

/// Answers every prompt with its first words; fails every call after `budget`
/// calls (a run cut off part way).
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
            text: format!("about: {}", &m[0].content[..20.min(m[0].content.len())]),
            prompt_tokens: 50,
            completion_tokens: 4,
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

fn small_data() -> ExplicitRatings {
    let mut histories = BTreeMap::new();
    let mut users = HashMap::new();
    for u in 1..=6u32 {
        histories.insert(
            u,
            (0..8)
                .map(|i| Rated {
                    movie: 1 + (u + i) % 10,
                    stars: 1 + (i % 5) as u8,
                })
                .collect(),
        );
        users.insert(
            u,
            UserProfile {
                gender: 'M',
                age: 35,
                occupation: 4,
            },
        );
    }
    let movies = (1..=10u32)
        .map(|m| {
            (
                m,
                Movie {
                    title: format!("Film {m}, The (1990)"),
                    genres: vec!["Drama".into()],
                },
            )
        })
        .collect();
    ExplicitRatings {
        histories,
        users,
        movies,
    }
}

#[test]
fn knowledge_generation_resumes_without_losing_or_repeating_records() {
    let data = small_data();
    let kar = build(&data, &ProtocolConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.redb")).unwrap();
    let cfg = KnowledgeConfig {
        group: 1,
        ..KnowledgeConfig::default()
    };
    let cut = Cutoff {
        budget: 7,
        calls: AtomicUsize::new(0),
    };
    let ctx = LlmContext {
        llm: &cut,
        cache: &cache,
    };
    let (_, first) = generate(ctx, &data, &kar, &cfg, dir.path(), &mut |_| {}, &|_| {}).unwrap();
    assert_eq!(first.users + first.items, 7);
    assert_eq!(first.failed, 6 + 10 - 7);
    let full = Cutoff {
        budget: usize::MAX,
        calls: AtomicUsize::new(0),
    };
    let ctx = LlmContext {
        llm: &full,
        cache: &cache,
    };
    let (art, second) = generate(ctx, &data, &kar, &cfg, dir.path(), &mut |_| {}, &|_| {}).unwrap();
    assert_eq!(
        (second.users, second.items, second.failed, second.cached),
        (6, 10, 0, 7)
    );
    assert_eq!(
        full.calls.load(Ordering::SeqCst),
        9,
        "only the missing prompts ran"
    );
    let users = read_records(&art.join("users.jsonl")).unwrap();
    let items = read_records(&art.join("items.jsonl")).unwrap();
    let ids: HashSet<u32> = users.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 6);
    assert!(
        users
            .iter()
            .all(|r| r.kind == Kind::User && r.prompt.starts_with(&r.context))
    );
    // Item prompts name the movie with its article in front.
    assert!(
        items
            .iter()
            .all(|r| r.kind == Kind::Item && r.prompt.contains("The Film "))
    );
    assert_eq!(items.iter().map(|r| r.id).collect::<HashSet<_>>().len(), 10);
    // A user's prompt holds only the prompt-only ratings: none of their targets.
    for r in &users {
        let targets: Vec<u32> = kar
            .train
            .samples
            .iter()
            .chain(&kar.valid.samples)
            .chain(&kar.test.samples)
            .filter(|s| s.user == r.id)
            .map(|s| s.movie)
            .collect();
        for m in targets {
            let t = format!("\"The Film {m} (1990)\"");
            assert!(
                !r.context.contains(&t),
                "user {}: {t} in {}",
                r.id,
                r.context
            );
        }
    }
}
