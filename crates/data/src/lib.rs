//! llmrec data: dataset loaders and registry, preprocessing, splits and synthetic data.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod download;
pub mod loaders;
pub mod preprocess;
pub mod registry;
pub mod split;
pub mod synthetic;

pub use registry::{dataset_names, load, load_from_dir};
