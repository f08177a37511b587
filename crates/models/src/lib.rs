//! Neural models of llmrec in candle: SASRec (Kang & McAuley 2018) and TIGER (Rajput
//! et al. 2023) with its Semantic-ID schemes, trained by one shared loop
//! ([`learner`]) with versioned checkpoints ([`checkpoint`]).
//!
//! A model that grew is a folder: [`sasrec`] (`model`, `train`), [`tiger`] (`config`,
//! `model`, `generation`, `train`, `checkpoint`) and [`semantic_ids`] (`rqvae`,
//! `schemes`, `kmeans`, `spectral`).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod content_mlp;
pub mod ctr;
mod device;
pub mod init;
mod layers;
pub mod learner;
pub mod loss;
mod mha;
pub mod optim;
pub mod sasrec;
pub mod semantic_ids;
pub mod tiger;
pub mod trie;

pub use device::parse_device;
pub use learner::{EpochRecord, Stop, TrainEvent};
pub use loss::Loss;
pub use sasrec::{
    CHECKPOINT_VERSION, SasRec, SasRecConfig, SasRecModel, SasRecTrainConfig, SasRecTrainReport,
    load_checkpoint, load_checkpoint_on, train,
};
