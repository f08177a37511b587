//! The rating-prediction protocol: per user, in time order, the last 10% of the
//! ratings (at least one) are test, the 10% before them validation, the rest
//! training; every method sees the same rows. Metrics on a set of rows: RMSE and
//! MAE of the predicted stars, and ROC-AUC with "4 stars or more" as the positive
//! class and the prediction as the score.

use llmrec_core::metrics::{auc, mae, rmse};
use llmrec_core::{Error, Result};
use llmrec_data::loaders::ExplicitRatings;
use serde::{Deserialize, Serialize};

/// One rating row of the split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatingRow {
    /// MovieLens user id.
    pub user: u32,
    /// MovieLens movie id.
    pub movie: u32,
    /// Stars, 1 to 5.
    pub stars: f32,
    /// Index in the user's time-ordered history.
    pub position: usize,
}

/// Training, validation and test rows.
#[derive(Debug, Clone, Default)]
pub struct RatingSplit {
    /// Every user's oldest ratings.
    pub train: Vec<RatingRow>,
    /// The ratings just before each user's test ratings.
    pub valid: Vec<RatingRow>,
    /// Each user's most recent ratings.
    pub test: Vec<RatingRow>,
    /// Users with fewer than 3 ratings: all their rows are training rows.
    pub short_users: usize,
}

/// How many of `n` ratings the held-out share `share` takes: `⌊n · share⌋`, at
/// least one.
pub fn held_out(n: usize, share: f64) -> usize {
    ((n as f64 * share).floor() as usize).max(1)
}

/// Splits every user's ratings in time order: the last [`held_out`]`(n, share)` are
/// test, as many before them validation, the rest training. A user with fewer than
/// 3 ratings keeps them all in training.
pub fn split(data: &ExplicitRatings, share: f64) -> Result<RatingSplit> {
    if !(share > 0.0 && share < 0.5) {
        return Err(Error::config(
            "rating.share",
            format!("the held-out share must be in (0, 0.5), got {share}"),
        ));
    }
    let mut out = RatingSplit::default();
    for (&user, history) in &data.histories {
        let n = history.len();
        let rows = history.iter().enumerate().map(|(position, r)| RatingRow {
            user,
            movie: r.movie,
            stars: r.stars as f32,
            position,
        });
        if n < 3 {
            out.short_users += 1;
            out.train.extend(rows);
            continue;
        }
        let k = held_out(n, share).min((n - 1) / 2);
        for row in rows {
            if row.position >= n - k {
                out.test.push(row);
            } else if row.position >= n - 2 * k {
                out.valid.push(row);
            } else {
                out.train.push(row);
            }
        }
    }
    Ok(out)
}

/// RMSE, MAE and AUC of predictions on a set of rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatingMetrics {
    /// Root mean squared error of the stars.
    pub rmse: f64,
    /// Mean absolute error of the stars.
    pub mae: f64,
    /// ROC-AUC: positives are ratings of 4 or 5, scores the predictions.
    pub auc: f64,
    /// Rows scored.
    pub rows: usize,
}

/// [`RatingMetrics`] of predictions `pred` for `rows` (same order).
pub fn metrics(rows: &[RatingRow], pred: &[f32]) -> Result<RatingMetrics> {
    let truth: Vec<f32> = rows.iter().map(|r| r.stars).collect();
    let labels: Vec<f32> = truth
        .iter()
        .map(|&s| if s >= 4.0 { 1.0 } else { 0.0 })
        .collect();
    Ok(RatingMetrics {
        rmse: rmse(&truth, pred)?,
        mae: mae(&truth, pred)?,
        auc: auc(&labels, pred)?,
        rows: rows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmrec_data::loaders::{Movie, Rated, UserProfile};
    use std::collections::{BTreeMap, HashMap};

    fn data(lengths: &[usize]) -> ExplicitRatings {
        let mut histories = BTreeMap::new();
        let mut users = HashMap::new();
        let mut movies = HashMap::new();
        for (u, &n) in lengths.iter().enumerate() {
            let h: Vec<Rated> = (0..n)
                .map(|i| Rated {
                    movie: (i * 7 % 11) as u32,
                    stars: (1 + (i + u) % 5) as u8,
                })
                .collect();
            histories.insert(u as u32 + 1, h);
            users.insert(
                u as u32 + 1,
                UserProfile {
                    gender: 'M',
                    age: 25,
                    occupation: 0,
                },
            );
        }
        for m in 0..11 {
            movies.insert(
                m,
                Movie {
                    title: format!("M{m}"),
                    genres: vec![],
                },
            );
        }
        ExplicitRatings {
            histories,
            users,
            movies,
        }
    }

    #[test]
    fn the_last_tenth_is_test_and_the_tenth_before_it_validation() {
        let d = data(&[20, 35, 9, 2]);
        let s = split(&d, 0.1).unwrap();
        let count = |rows: &[RatingRow], u: u32| rows.iter().filter(|r| r.user == u).count();
        assert_eq!(
            (count(&s.train, 1), count(&s.valid, 1), count(&s.test, 1)),
            (16, 2, 2)
        );
        assert_eq!(
            (count(&s.train, 2), count(&s.valid, 2), count(&s.test, 2)),
            (29, 3, 3)
        );
        assert_eq!(
            (count(&s.train, 3), count(&s.valid, 3), count(&s.test, 3)),
            (7, 1, 1)
        );
        assert_eq!(
            (count(&s.train, 4), count(&s.valid, 4), count(&s.test, 4)),
            (2, 0, 0)
        );
        assert_eq!(s.short_users, 1);
        // Time order: every training row of a user comes before its validation rows,
        // and those before its test rows; no row is in two parts.
        for u in 1..=3u32 {
            let last = |rows: &[RatingRow]| {
                rows.iter()
                    .filter(|r| r.user == u)
                    .map(|r| r.position)
                    .max()
            };
            let first = |rows: &[RatingRow]| {
                rows.iter()
                    .filter(|r| r.user == u)
                    .map(|r| r.position)
                    .min()
            };
            assert!(last(&s.train) < first(&s.valid));
            assert!(last(&s.valid) < first(&s.test));
        }
        assert_eq!(s.train.len() + s.valid.len() + s.test.len(), 66);
    }

    #[test]
    fn metrics_by_hand() {
        let rows: Vec<RatingRow> = [5.0, 2.0, 4.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &stars)| RatingRow {
                user: 1,
                movie: i as u32,
                stars,
                position: i,
            })
            .collect();
        let m = metrics(&rows, &[4.0, 3.0, 4.0, 3.0]).unwrap();
        // Errors 1, 1, 0, 2: RMSE sqrt(6/4), MAE 1.
        assert!((m.rmse - 1.5f64.sqrt()).abs() < 1e-9);
        assert!((m.mae - 1.0).abs() < 1e-9);
        // Positives (5, 4) both scored 4, negatives (2, 1) both 3: AUC 1.
        assert!((m.auc - 1.0).abs() < 1e-9);
        assert!(split(&data(&[5]), 0.7).is_err());
    }
}
