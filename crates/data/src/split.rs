//! Splits: leave-one-out for sequential ranking, temporal ratio splits for
//! rating and CTR tasks. Validation and test items never reach training data.

use llmrec_core::{Dataset, Error, Interaction, Result, SequenceSplit, UserSplit};
use serde::{Deserialize, Serialize};

/// Name recorded with results made on [`leave_one_out`].
pub const LEAVE_ONE_OUT: &str = "leave-one-out (last item test, second-to-last validation)";

/// Leave-one-out: each user's last item is the test item, the second-to-last
/// the validation item, the rest training.
///
/// Users with fewer than 3 interactions keep everything in training and are
/// not evaluated (SASRec's convention).
pub fn leave_one_out(ds: &Dataset) -> SequenceSplit {
    let users = ds
        .sequences()
        .into_iter()
        .map(|mut s| {
            if s.len() < 3 {
                return UserSplit {
                    train: s,
                    valid: vec![],
                    test: vec![],
                };
            }
            let test = s.pop().into_iter().collect();
            let valid = s.pop().into_iter().collect();
            UserSplit {
                train: s,
                valid,
                test,
            }
        })
        .collect();
    SequenceSplit {
        name: LEAVE_ONE_OUT.to_owned(),
        n_items: ds.n_items(),
        users,
    }
}

/// Fractions of each part in a ratio split. They must be positive and sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratios {
    /// Training fraction (default 0.8).
    pub train: f64,
    /// Validation fraction (default 0.1).
    pub valid: f64,
    /// Test fraction (default 0.1).
    pub test: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios {
            train: 0.8,
            valid: 0.1,
            test: 0.1,
        }
    }
}

impl Ratios {
    fn validate(&self) -> Result<()> {
        let parts = [
            ("train", self.train),
            ("valid", self.valid),
            ("test", self.test),
        ];
        for (name, v) in parts {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err(Error::config(
                    format!("split.ratios.{name}"),
                    format!("expected a fraction in [0, 1], got {v}"),
                ));
            }
        }
        let sum = self.train + self.valid + self.test;
        if (sum - 1.0).abs() > 1e-9 {
            return Err(Error::config(
                "split.ratios",
                format!("fractions must sum to 1, got {sum}"),
            ));
        }
        Ok(())
    }
}

/// Interactions (with ratings) cut into three parts.
#[derive(Debug, Clone, PartialEq)]
pub struct InteractionSplit {
    /// How the split was made.
    pub name: String,
    /// Training interactions.
    pub train: Vec<Interaction>,
    /// Validation interactions.
    pub valid: Vec<Interaction>,
    /// Test interactions.
    pub test: Vec<Interaction>,
}

/// Per-user temporal ratio split: each user's oldest `train` fraction is
/// training, the next `valid` fraction validation and the newest the test.
/// Counts are rounded down for validation and test, so a short history stays
/// in training.
pub fn temporal_per_user(ds: &Dataset, ratios: Ratios) -> Result<InteractionSplit> {
    ratios.validate()?;
    let mut out = InteractionSplit {
        name: format!(
            "temporal per user {:.2}/{:.2}/{:.2}",
            ratios.train, ratios.valid, ratios.test
        ),
        train: vec![],
        valid: vec![],
        test: vec![],
    };
    for xs in ds.user_interactions() {
        let n = xs.len();
        let n_test = (n as f64 * ratios.test).floor() as usize;
        let n_valid = (n as f64 * ratios.valid).floor() as usize;
        let n_train = n - n_test - n_valid;
        out.train.extend_from_slice(&xs[..n_train]);
        out.valid.extend_from_slice(&xs[n_train..n_train + n_valid]);
        out.test.extend_from_slice(&xs[n_train + n_valid..]);
    }
    Ok(out)
}

/// Global temporal split: all interactions are ordered by timestamp (stable:
/// ties keep the dataset's order) and cut at the `train` and `train + valid`
/// quantiles, so no test interaction is older than a training one.
///
/// Needs a timestamp on every interaction.
pub fn temporal_global(ds: &Dataset, ratios: Ratios) -> Result<InteractionSplit> {
    ratios.validate()?;
    if let Some(x) = ds.interactions.iter().find(|x| x.timestamp.is_none()) {
        return Err(Error::Invalid(format!(
            "dataset `{}` has no timestamp for user {} (raw `{}`): a global temporal split needs timestamps; use the per-user split",
            ds.name,
            x.user,
            ds.users.raw(x.user)
        )));
    }
    let mut xs = ds.interactions.clone();
    xs.sort_by_key(|x| x.timestamp.unwrap_or(i64::MIN));
    let n = xs.len();
    let n_train = (n as f64 * ratios.train).round() as usize;
    let n_valid = (n as f64 * ratios.valid).round() as usize;
    let n_valid = n_valid.min(n - n_train);
    let test = xs.split_off(n_train + n_valid);
    let valid = xs.split_off(n_train);
    Ok(InteractionSplit {
        name: format!(
            "temporal global {:.2}/{:.2}/{:.2}",
            ratios.train, ratios.valid, ratios.test
        ),
        train: xs,
        valid,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmrec_core::{IdMap, ItemText, Stage};

    fn ds(rows: &[(&str, &str, i64)]) -> Dataset {
        let mut u = IdMap::new();
        let mut i = IdMap::new();
        let xs: Vec<Interaction> = rows
            .iter()
            .map(|(a, b, t)| Interaction {
                user: u.intern(a),
                item: i.intern(b),
                rating: Some(3.0),
                timestamp: Some(*t),
            })
            .collect();
        let n = i.len();
        Dataset::from_source_order("t", u, i, xs, vec![ItemText::default(); n]).unwrap()
    }

    #[test]
    fn leave_one_out_by_hand() {
        let d = ds(&[
            ("u", "a", 1),
            ("u", "b", 2),
            ("u", "c", 3),
            ("u", "d", 4),
            ("v", "a", 1),
            ("v", "b", 2),
        ]);
        let s = leave_one_out(&d);
        assert_eq!(s.users[0].train, vec![0, 1]);
        assert_eq!(s.users[0].valid, vec![2]);
        assert_eq!(s.users[0].test, vec![3]);
        assert_eq!(s.users[1].train, vec![0, 1]);
        assert!(s.users[1].test.is_empty());
        let test = s.cases(Stage::Test);
        assert_eq!(test.len(), 1);
        assert_eq!(test[0].history, vec![0, 1, 2]);
        assert_eq!(test[0].targets, vec![3]);
        let valid = s.cases(Stage::Valid);
        assert_eq!(valid[0].history, vec![0, 1]);
        assert_eq!(valid[0].targets, vec![2]);
    }

    #[test]
    fn per_user_ratio_and_no_leak() {
        let rows: Vec<(String, String, i64)> = (0..10)
            .map(|k| ("u".to_string(), format!("i{k}"), k as i64))
            .collect();
        let rows: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|(a, b, t)| (a.as_str(), b.as_str(), *t))
            .collect();
        let d = ds(&rows);
        let s = temporal_per_user(&d, Ratios::default()).unwrap();
        assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (8, 1, 1));
        assert!(s.train.iter().all(|x| x.timestamp < s.valid[0].timestamp));
        assert_eq!(s.test[0].timestamp, Some(9));
        let bad = Ratios {
            train: 0.8,
            valid: 0.1,
            test: f64::NAN,
        };
        assert!(matches!(
            temporal_per_user(&d, bad),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn global_split_orders_by_time() {
        let d = ds(&[
            ("u", "a", 10),
            ("u", "b", 40),
            ("v", "a", 20),
            ("v", "c", 30),
            ("w", "b", 5),
        ]);
        let r = Ratios {
            train: 0.6,
            valid: 0.2,
            test: 0.2,
        };
        let s = temporal_global(&d, r).unwrap();
        let ts = |xs: &[Interaction]| xs.iter().map(|x| x.timestamp.unwrap()).collect::<Vec<_>>();
        assert_eq!(ts(&s.train), vec![5, 10, 20]);
        assert_eq!(ts(&s.valid), vec![30]);
        assert_eq!(ts(&s.test), vec![40]);
    }
}
