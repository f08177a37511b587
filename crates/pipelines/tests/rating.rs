//! Rating prediction on the real MovieLens 1M table (`ml-1m/derived/ratings_ordered.tsv`
//! under `LLMREC_DATA_DIR`): the split keeps time order and never puts a held-out
//! rating in training, and the baselines order as collaborative filtering should.
//! On synthetic ratings: LLM prompts hold only training ratings, and both readouts
//! come out of a scripted LLM as they should, cached on a rerun.

use std::collections::{BTreeMap, HashMap, HashSet};

use llmrec_core::Result;
use llmrec_data::loaders::{ExplicitRatings, Movie, Rated, UserProfile, load_ml1m_explicit};
use llmrec_llm::{Cache, Generation, Llm, LlmContext, LogProb, Message, Role, SamplingParams};
use llmrec_pipelines::rating::finetune::{heldout_texts, sft_chats, training_examples};
use llmrec_pipelines::rating::llm::{
    LlmRatingConfig, TrainHistories, draw_shots, messages, predict, prompt_parts, sample_rows,
};
use llmrec_pipelines::rating::protocol::{RatingRow, split};
use llmrec_pipelines::rating::{MfGrid, MlpGrid, RatingConfig, run_baselines, run_llm};

#[test]
fn ml1m_split_holds_out_each_users_latest_ratings_and_the_baselines_order() {
    let Some(dir) = llmrec_testkit::dataset_path("ml-1m") else {
        return;
    };
    let data = load_ml1m_explicit(&dir).unwrap();
    assert_eq!(data.len(), 999_611);
    assert_eq!(data.histories.len(), 6_040);
    let s = split(&data, 0.1).unwrap();
    assert_eq!(s.train.len() + s.valid.len() + s.test.len(), 999_611);
    assert_eq!(s.short_users, 0);
    // Per user: every training position before every validation position, those
    // before every test position; the test part is a tenth of the history.
    let mut last_train: HashMap<u32, usize> = HashMap::new();
    for r in &s.train {
        let e = last_train.entry(r.user).or_insert(0);
        *e = (*e).max(r.position);
    }
    let mut first_valid: HashMap<u32, usize> = HashMap::new();
    for r in &s.valid {
        let e = first_valid.entry(r.user).or_insert(usize::MAX);
        *e = (*e).min(r.position);
        assert!(r.position > last_train[&r.user]);
    }
    for r in &s.test {
        assert!(r.position > last_train[&r.user]);
        assert!(first_valid.get(&r.user).is_some_and(|&v| r.position > v));
    }
    for (u, h) in &data.histories {
        let t = s.test.iter().filter(|r| r.user == *u).count();
        assert_eq!(t, (h.len() / 10).max(1), "user {u}");
        if *u > 40 {
            break;
        }
    }
    let cfg = RatingConfig {
        bias_regs: vec![5.0],
        bias_sweeps: 3,
        mf: MfGrid {
            factors: vec![8],
            regs: vec![0.05],
            lr: 0.01,
            epochs: 3,
            patience: 1,
        },
        mlp: MlpGrid {
            dims: vec![8],
            hidden: vec![16],
            lr: 0.003,
            epochs: 1,
            ..MlpGrid::default()
        },
        ..RatingConfig::default()
    };
    let report = run_baselines(&data, &cfg, &mut |_| {}).unwrap();
    let rmse: Vec<f64> = report.methods.iter().map(|m| m.test.rmse).collect();
    assert_eq!(report.methods.len(), 4);
    assert!(rmse[1..].iter().all(|&r| r < rmse[0]), "{rmse:?}");
    assert!(
        report
            .methods
            .iter()
            .all(|m| m.test.auc > 0.5 || m.method == "global mean")
    );
}

/// `users` users with `n` ratings each; every rating is of its own movie, titled
/// after the user and position, so a title in a prompt names one rating.
fn synthetic(users: u32, n: usize) -> ExplicitRatings {
    let mut histories = BTreeMap::new();
    let mut profiles = HashMap::new();
    let mut movies = HashMap::new();
    for u in 1..=users {
        let h: Vec<Rated> = (0..n)
            .map(|i| {
                let movie = u * 1000 + i as u32;
                movies.insert(
                    movie,
                    Movie {
                        title: format!("Film u{u}p{i}."),
                        genres: vec!["Drama".into()],
                    },
                );
                Rated {
                    movie,
                    stars: (1 + (u as usize * 3 + i) % 5) as u8,
                }
            })
            .collect();
        histories.insert(u, h);
        profiles.insert(
            u,
            UserProfile {
                gender: 'F',
                age: 25,
                occupation: 1,
            },
        );
    }
    ExplicitRatings {
        histories,
        users: profiles,
        movies,
    }
}

#[test]
fn no_held_out_rating_reaches_a_prompt_or_a_worked_example() {
    let data = synthetic(30, 40);
    let s = split(&data, 0.1).unwrap();
    let train: HashSet<(u32, usize)> = s.train.iter().map(|r| (r.user, r.position)).collect();
    let held: Vec<&RatingRow> = s.valid.iter().chain(&s.test).collect();
    let h = TrainHistories::new(&s.train, 5);
    let rows = sample_rows(&s.test, 40, 3);
    assert_eq!(rows.len(), 40);
    let sampled: HashSet<u32> = rows.iter().map(|r| r.user).collect();
    assert!(sampled.len() < 30);
    let shots = draw_shots(&h, 3, &sampled, 9);
    assert_eq!(shots, draw_shots(&h, 3, &sampled, 9));
    for row in &rows {
        let parts = prompt_parts(&h, row, 20, &shots);
        // The user's 20 latest training ratings, in order, just before validation.
        assert_eq!(parts.history.len(), 20);
        assert!(parts.history.iter().all(|r| r.user == row.user));
        assert!(
            parts
                .history
                .windows(2)
                .all(|w| w[0].position + 1 == w[1].position)
        );
        assert_eq!(parts.history[19].position, 40 - 2 * 4 - 1);
        assert_eq!(parts.shots.len(), 3);
        let lenders: HashSet<u32> = parts.shots.iter().map(|s| s.target.user).collect();
        assert_eq!(lenders.len(), 3, "three distinct lenders");
        assert!(
            lenders.is_disjoint(&sampled),
            "lenders are outside the sample"
        );
        for shot in &parts.shots {
            assert_eq!(shot.history.len(), 5);
            assert!(shot.history.iter().all(|r| r.user == shot.target.user));
            assert_eq!(shot.history[4].position + 1, shot.target.position);
        }
        let shown = parts.history.iter().chain(
            parts
                .shots
                .iter()
                .flat_map(|s| s.history.iter().chain([&s.target])),
        );
        for r in shown {
            assert!(
                train.contains(&(r.user, r.position)),
                "{r:?} is not a training row"
            );
        }
        // In the text: no held-out movie but the one asked about, whose stars the
        // prompt never states.
        let m = messages(&data, &parts);
        let text: String = m
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for r in &held {
            let title = &data.movies[&r.movie].title;
            let times = text.matches(title.as_str()).count();
            let expected = usize::from(r.user == row.user && r.position == row.position);
            assert_eq!(times, expected, "{title} in the prompt of {row:?}");
        }
        let last = &m.last().unwrap().content;
        assert!(last.ends_with("Answer with one digit from 1 to 5."));
        // Worked examples: a user turn answered by the example's own stars.
        assert_eq!(m.len(), 1 + 2 * 3 + 1);
        for (k, shot) in parts.shots.iter().enumerate() {
            assert_eq!(m[2 + 2 * k].content, format!("{}", shot.target.stars as u8));
        }
    }
}

/// Answers "I'd say 4 stars." (or nothing useful when the prompt holds a
/// worked example), and gives "1".."5" the probabilities 0.1, 0.2, 0.3, 0.25, 0.15.
struct Scripted;

const P: [f64; 5] = [0.1, 0.2, 0.3, 0.25, 0.15];

impl Llm for Scripted {
    fn backend(&self) -> &str {
        "test"
    }
    fn model(&self) -> &str {
        "scripted"
    }
    fn chat(&self, m: &[Message], _p: &SamplingParams) -> Result<Generation> {
        let text = if m.len() > 2 {
            "no idea"
        } else {
            "I'd say 4 stars."
        };
        Ok(Generation {
            text: text.into(),
            prompt_tokens: 100,
            completion_tokens: 5,
            latency_ms: 0.0,
            finish: llmrec_llm::FinishReason::Stop,
        })
    }
    fn score_continuations(&self, _m: &[Message], c: &[String]) -> Result<Vec<LogProb>> {
        Ok(c.iter()
            .map(|s| {
                let d: usize = s.parse().unwrap();
                let v = P[d - 1].ln();
                LogProb {
                    total: v,
                    mean: v,
                    n_tokens: 1,
                }
            })
            .collect())
    }
    fn generate_constrained(&self, _m: &[Message], allowed: &[String]) -> Result<String> {
        Ok(allowed[0].clone())
    }
}

#[test]
fn both_readouts_come_from_the_llm_and_a_rerun_is_served_from_the_cache() {
    let data = synthetic(30, 40);
    let s = split(&data, 0.1).unwrap();
    let h = TrainHistories::new(&s.train, 5);
    let rows = sample_rows(&s.test, 12, 1);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.redb")).unwrap();
    let ctx = LlmContext {
        llm: &Scripted,
        cache: &cache,
    };
    let cfg = LlmRatingConfig {
        group: 5,
        ..LlmRatingConfig::default()
    };
    let users: HashSet<u32> = rows.iter().map(|r| r.user).collect();
    let shots = draw_shots(&h, 2, &users, 1);
    let zero = predict(&ctx, &data, &h, &rows, &cfg, &[], 3.5, &|_, _| {}).unwrap();
    assert_eq!(zero.parsed, vec![4.0; 12]);
    assert_eq!(zero.parse_failures, 0);
    assert!(zero.expected.iter().all(|&e| (e - 3.15).abs() < 1e-5));
    assert_eq!((zero.generate.calls, zero.generate.cached), (12, 0));
    assert_eq!((zero.score.calls, zero.score.cached), (12, 0));
    assert_eq!(zero.generate.prompt_tokens, 1200);
    // Few-shot answers do not parse: each falls back to the given value.
    let few = predict(&ctx, &data, &h, &rows, &cfg, &shots, 3.5, &|_, _| {}).unwrap();
    assert_eq!(few.parsed, vec![3.5; 12]);
    assert_eq!(few.parse_failures, 12);
    let again = predict(&ctx, &data, &h, &rows, &cfg, &[], 3.5, &|_, _| {}).unwrap();
    assert_eq!(again.parsed, zero.parsed);
    assert_eq!(again.expected, zero.expected);
    assert_eq!((again.generate.cached, again.score.cached), (12, 12));

    // The whole run: three baselines and two readouts of each prompt style.
    let rc = RatingConfig {
        bias_regs: vec![5.0],
        mf: MfGrid {
            factors: vec![4],
            regs: vec![0.05],
            epochs: 2,
            ..MfGrid::default()
        },
        mlp: MlpGrid {
            dims: vec![4],
            hidden: vec![8],
            epochs: 2,
            ..MlpGrid::default()
        },
        llm: LlmRatingConfig {
            sample: 12,
            shots: 2,
            ..LlmRatingConfig::default()
        },
        ..RatingConfig::default()
    };
    let report = run_llm(&data, &rc, &ctx, &mut |_| {}, &|_, _, _| {}).unwrap();
    assert_eq!(report.sample, 12);
    let names: Vec<(&str, &str)> = report
        .results
        .iter()
        .map(|r| (r.method.as_str(), r.readout.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("global mean", "-"),
            ("user + item biases", "-"),
            ("biased MF (SGD)", "-"),
            ("MLP (user, movie, genres)", "-"),
            ("zero-shot LLM", "parsed"),
            ("zero-shot LLM", "expected"),
            ("2-shot LLM", "parsed"),
            ("2-shot LLM", "expected"),
        ]
    );
    assert!(report.results.iter().all(|r| r.sample.rows == 12));
    assert!(report.results[..4].iter().all(|r| r.full_test.is_some()));
    assert_eq!(report.results[6].parse_failures, Some(12));
}

#[test]
fn fine_tuning_texts_hold_only_earlier_training_ratings() {
    let data = synthetic(12, 30);
    let s = split(&data, 0.1).unwrap();
    let train: HashSet<(u32, usize)> = s.train.iter().map(|r| (r.user, r.position)).collect();
    let all = training_examples(&data, &s.train, 1.0, 20, 4).unwrap();
    assert_eq!(all.len(), s.train.len());
    let tenth = training_examples(&data, &s.train, 0.1, 20, 4).unwrap();
    assert_eq!(tenth.len(), (s.train.len() as f64 * 0.1).round() as usize);
    assert_eq!(
        tenth,
        training_examples(&data, &s.train, 0.1, 20, 4).unwrap()
    );
    // Every title in a text but the one asked about is the same user's earlier
    // training rating.
    let only_earlier_training = |row: &RatingRow, text: &str| {
        let asked = &data.movies[&row.movie].title;
        assert!(text.contains(asked.as_str()), "{text}");
        for (u, h) in &data.histories {
            for (p, r) in h.iter().enumerate() {
                let title = &data.movies[&r.movie].title;
                if title == asked || !text.contains(title.as_str()) {
                    continue;
                }
                assert_eq!(*u, row.user, "{title} in {text}");
                assert!(
                    p < row.position && train.contains(&(*u, p)),
                    "{title} in {text}"
                );
            }
        }
    };
    for e in &all {
        assert!(train.contains(&(e.row.user, e.row.position)));
        let asked = &data.movies[&e.row.movie].title;
        assert!(e.text.starts_with(&format!("Movie: {asked}")), "{}", e.text);
        only_earlier_training(&e.row, &e.text);
    }
    // The LLM's fine-tuning chats: the same rows, the question over earlier training
    // ratings, answered by the row's own stars.
    let chats = sft_chats(&data, &s.train, 1.0, 20, 4).unwrap();
    assert_eq!(chats.len(), all.len());
    for (e, chat) in all.iter().zip(&chats) {
        let answer = chat.last().unwrap();
        assert_eq!(answer.role, Role::Assistant);
        assert_eq!(answer.content, format!("{}", e.row.stars.round() as u8));
        let question = &chat[chat.len() - 2];
        assert_eq!(question.role, Role::User);
        only_earlier_training(&e.row, &question.content);
    }
    // Validation and test texts (what the fine-tuned model is scored on) too.
    for rows in [&s.valid, &s.test] {
        let texts = heldout_texts(&data, &s.train, rows, 20);
        assert_eq!(texts.len(), rows.len());
        for (r, t) in rows.iter().zip(&texts) {
            only_earlier_training(r, t);
        }
    }
    assert!(training_examples(&data, &s.train, 0.0, 20, 4).is_err());
}
