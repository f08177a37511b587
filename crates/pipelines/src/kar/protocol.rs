//! KAR's CTR protocol on MovieLens 1M. Per user, in time order, the first
//! `b = min(⌈n/2⌉, prompt_max)` ratings feed only the LLM prompt of the user's
//! reasoning knowledge; every later rating is one CTR sample (label: 4 stars or
//! more) whose features are the target movie, its genre and the previous
//! `history` ratings (movie, genre, stars). Users are split, seeded, into
//! training, validation and test users.

use std::collections::{BTreeMap, HashSet};

use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::{ExplicitRatings, Rated};
use serde::{Deserialize, Serialize};

/// Previous interactions kept as features (the fixed width of the sample).
pub const HISTORY: usize = 5;

/// Settings of the protocol (documented in `configs/kar.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    /// At most this many of a user's first ratings feed the prompt. Default 30.
    pub prompt_max: usize,
    /// Share of users for training. Default 0.8.
    pub train_share: f64,
    /// Share of users for validation (the rest are test users). Default 0.1.
    pub valid_share: f64,
    /// Seed of the user split. Default 42.
    pub split_seed: u64,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            prompt_max: 30,
            train_share: 0.8,
            valid_share: 0.1,
            split_seed: 42,
        }
    }
}

impl ProtocolConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.prompt_max == 0 {
            return Err(Error::config("protocol.prompt_max", "must be positive"));
        }
        let ok = |x: f64| x > 0.0 && x < 1.0;
        if !ok(self.train_share)
            || !ok(self.valid_share)
            || self.train_share + self.valid_share >= 1.0
        {
            return Err(Error::config(
                "protocol.train_share/valid_share",
                "each must be in (0, 1), and together below 1 (the rest are test users)",
            ));
        }
        Ok(())
    }
}

/// How many of a user's `n` ratings feed the prompt: `min(⌈n/2⌉, max)`.
pub fn prompt_len(n: usize, max: usize) -> usize {
    n.div_ceil(2).min(max)
}

/// One CTR sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CtrSample {
    /// MovieLens user id.
    pub user: u32,
    /// MovieLens movie id of the target.
    pub movie: u32,
    /// 1 when the user gave 4 stars or more, else 0.
    pub label: f32,
    /// The previous interactions, most recent last: movie ids (0: none).
    pub hist_movies: [u32; HISTORY],
    /// Their stars (0: none).
    pub hist_stars: [u8; HISTORY],
}

/// The samples of one part of the split.
#[derive(Debug, Clone, Default)]
pub struct Part {
    /// Its users, ascending.
    pub users: Vec<u32>,
    /// Their samples, by user then time.
    pub samples: Vec<CtrSample>,
}

/// The protocol's data.
#[derive(Debug, Clone, Default)]
pub struct KarData {
    /// Each user's prompt-only ratings, oldest first.
    pub prompt: BTreeMap<u32, Vec<Rated>>,
    /// Training users' samples.
    pub train: Part,
    /// Validation users' samples.
    pub valid: Part,
    /// Test users' samples.
    pub test: Part,
}

impl KarData {
    /// Samples in all.
    pub fn samples(&self) -> usize {
        self.train.samples.len() + self.valid.samples.len() + self.test.samples.len()
    }

    /// Share of samples with a positive label.
    pub fn positive_share(&self) -> f64 {
        let pos: f64 = [&self.train, &self.valid, &self.test]
            .iter()
            .flat_map(|p| p.samples.iter())
            .map(|s| s.label as f64)
            .sum();
        pos / self.samples().max(1) as f64
    }
}

/// Builds the prompt histories and the samples, and splits users. Fails, naming the
/// user and movie, if a sample's target is also among the user's prompt ratings.
pub fn build(data: &ExplicitRatings, cfg: &ProtocolConfig) -> Result<KarData> {
    cfg.validate()?;
    let mut users: Vec<u32> = data.histories.keys().copied().collect();
    Rng::new(cfg.split_seed).shuffle(&mut users);
    let n = users.len();
    let n_train = (n as f64 * cfg.train_share).round() as usize;
    let n_valid = (n as f64 * cfg.valid_share).round() as usize;
    let mut parts = [Part::default(), Part::default(), Part::default()];
    for (i, &u) in users.iter().enumerate() {
        let p = if i < n_train {
            0
        } else if i < n_train + n_valid {
            1
        } else {
            2
        };
        parts[p].users.push(u);
    }
    let mut out = KarData::default();
    for part in &mut parts {
        part.users.sort_unstable();
        for &u in &part.users {
            let history = &data.histories[&u];
            let b = prompt_len(history.len(), cfg.prompt_max);
            let prompt = history[..b].to_vec();
            let seen: HashSet<u32> = prompt.iter().map(|r| r.movie).collect();
            for pos in b..history.len() {
                let target = history[pos];
                if seen.contains(&target.movie) {
                    return Err(Error::Invalid(format!(
                        "user {u}: movie {} is both in the prompt and a CTR target (position {pos})",
                        target.movie
                    )));
                }
                let mut hist_movies = [0u32; HISTORY];
                let mut hist_stars = [0u8; HISTORY];
                let from = pos.saturating_sub(HISTORY);
                let slot0 = HISTORY - (pos - from);
                for (k, r) in history[from..pos].iter().enumerate() {
                    hist_movies[slot0 + k] = r.movie;
                    hist_stars[slot0 + k] = r.stars;
                }
                part.samples.push(CtrSample {
                    user: u,
                    movie: target.movie,
                    label: if target.stars >= 4 { 1.0 } else { 0.0 },
                    hist_movies,
                    hist_stars,
                });
            }
            out.prompt.insert(u, prompt);
        }
    }
    let [train, valid, test] = parts;
    out.train = train;
    out.valid = valid;
    out.test = test;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmrec_data::loaders::{Movie, UserProfile};
    use std::collections::HashMap;

    fn data(users: u32, n: usize) -> ExplicitRatings {
        let mut histories = BTreeMap::new();
        let mut profiles = HashMap::new();
        for u in 1..=users {
            let h: Vec<Rated> = (0..n)
                .map(|i| Rated {
                    movie: 100 + i as u32,
                    stars: 1 + (i % 5) as u8,
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
        let movies = (0..n as u32)
            .map(|i| {
                (
                    100 + i,
                    Movie {
                        title: format!("M{i} (1999)"),
                        genres: vec!["Drama".into()],
                    },
                )
            })
            .collect();
        ExplicitRatings {
            histories,
            users: profiles,
            movies,
        }
    }

    #[test]
    fn prompt_length_rule() {
        assert_eq!(prompt_len(1, 30), 1);
        assert_eq!(prompt_len(7, 30), 4);
        assert_eq!(prompt_len(100, 30), 30);
    }

    #[test]
    fn samples_follow_the_prompt_and_carry_the_previous_five() {
        let d = build(&data(20, 9), &ProtocolConfig::default()).unwrap();
        assert_eq!(
            d.train.users.len() + d.valid.users.len() + d.test.users.len(),
            20
        );
        assert_eq!(d.train.users.len(), 16);
        // 9 ratings: 5 in the prompt, 4 samples each.
        assert_eq!(d.samples(), 20 * 4);
        let s = d.train.samples[0];
        assert_eq!(s.movie, 105);
        assert_eq!(s.hist_movies, [100, 101, 102, 103, 104]);
        assert_eq!(s.hist_stars, [1, 2, 3, 4, 5]);
        assert_eq!(s.label, 0.0); // 105 has 1 star
        for part in [&d.train, &d.valid, &d.test] {
            for s in &part.samples {
                assert!(d.prompt[&s.user].iter().all(|r| r.movie != s.movie));
            }
        }
        let short = build(&data(3, 3), &ProtocolConfig::default()).unwrap();
        let s = short
            .train
            .samples
            .iter()
            .chain(&short.valid.samples)
            .chain(&short.test.samples)
            .next()
            .unwrap();
        assert_eq!(s.hist_movies, [0, 0, 0, 100, 101]);
    }

    #[test]
    fn a_target_repeated_from_the_prompt_is_refused() {
        let mut d = data(2, 6);
        d.histories.get_mut(&1).unwrap()[5].movie = 100;
        let err = build(&d, &ProtocolConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("user 1") && err.contains("movie 100"), "{err}");
    }
}
