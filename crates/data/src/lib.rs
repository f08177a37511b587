//! llmrec data: dataset loaders and registry, preprocessing, splits and synthetic data.

#![warn(missing_docs)]

pub mod preprocess;
pub mod split;
pub mod synthetic;
