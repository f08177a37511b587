//! The one trait that every model and every evaluator shares.

use crate::{ItemId, Result, UserId};

/// What a model is asked to score: a user's chronological history, and the
/// user's dense id when the user was seen in training (`None` for a new user).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Dense user id, if the user is known to the model.
    pub user: Option<UserId>,
    /// Items the user interacted with, oldest first.
    pub history: &'a [ItemId],
}

impl<'a> Query<'a> {
    /// A query for a known user.
    pub fn new(user: UserId, history: &'a [ItemId]) -> Self {
        Query {
            user: Some(user),
            history,
        }
    }

    /// A query for a history alone (a new user).
    pub fn anonymous(history: &'a [ItemId]) -> Self {
        Query {
            user: None,
            history,
        }
    }
}

/// A model that scores every item for a history. Higher is better.
///
/// Evaluation, serving and the LLM pipelines (candidate retrieval) all use this
/// trait, so a model written once is evaluated and deployed unchanged.
pub trait Recommender: Send + Sync {
    /// Short name used in tables (`ease`, `sasrec`).
    fn name(&self) -> String;

    /// Number of items the model scores; `out` slices have this length.
    fn n_items(&self) -> usize;

    /// Writes a score for every item into `out` (length [`Recommender::n_items`]).
    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()>;

    /// Scores a batch; `out` has `queries.len() * n_items` entries, row-major.
    ///
    /// Models that can do one matrix product per batch override this.
    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        let n = self.n_items();
        for (q, row) in queries.iter().zip(out.chunks_mut(n)) {
            self.score_into(q, row)?;
        }
        Ok(())
    }

    /// The top `k` items for a query, best first, as `(item, score)`.
    ///
    /// Items in the history are left out when `exclude_history` is true. Ties
    /// are broken by ascending item id (list order only: the evaluator counts ties
    /// against the target, see [`crate::topk::standing_of`]).
    fn recommend(
        &self,
        query: &Query<'_>,
        k: usize,
        exclude_history: bool,
    ) -> Result<Vec<(ItemId, f32)>> {
        let mut scores = vec![0.0f32; self.n_items()];
        self.score_into(query, &mut scores)?;
        if exclude_history {
            crate::topk::mask(&mut scores, query.history);
        }
        Ok(crate::topk::top_k(&scores, k)
            .into_iter()
            .map(|i| (i, scores[i as usize]))
            .collect())
    }
}

impl<R: Recommender + ?Sized> Recommender for Box<R> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn n_items(&self) -> usize {
        (**self).n_items()
    }
    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        (**self).score_into(query, out)
    }
    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        (**self).score_batch(queries, out)
    }
}
