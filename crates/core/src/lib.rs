//! llmrec core: ids, datasets, the [`Recommender`] trait, metrics and evaluators.
//!
//! This crate has no tensor dependency: models live in other crates and meet
//! the evaluator through [`Recommender`].

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod check;
pub mod dataset;
mod error;
pub mod eval;
pub mod graph;
pub mod io;
pub mod metrics;
pub mod parallel;
pub mod plot;
pub mod recommender;
mod rng;
pub mod split;
pub mod topk;
pub mod trie;

pub use dataset::{Dataset, DatasetStats, IdMap, Interaction, ItemId, ItemText, UserId};
pub use error::{Error, Result};
pub use eval::{EvalCase, EvalConfig, EvalReport, Protocol, Sampling, evaluate};
pub use recommender::{Query, Recommender};
pub use rng::Rng;
pub use split::{SequenceSplit, Stage, UserSplit};
