//! SASRec (Kang & McAuley 2018): the self-attentive sequential recommender
//! ([`model`]) and its training on the shared learner ([`train`]).

pub mod model;
pub mod train;

pub use model::{Config, SasRec, SasRecModel};
pub use train::{
    CHECKPOINT_VERSION, TrainConfig, TrainReport, load_checkpoint, load_checkpoint_on, train,
};
