//! TIGER's sizes ([`TigerConfig`]) and token layout ([`Vocab`]).

use llmrec_core::check;
use llmrec_core::{Error, Result, UserId};
use serde::{Deserialize, Serialize};

use crate::semantic_ids::SemanticIds;

/// Padding token.
pub const PAD: u32 = 0;
/// Decoder start token.
pub const BOS: u32 = 1;
const SPECIALS: usize = 2;
pub(super) const MASK_BIAS: f32 = -1e9;

/// Hyper-parameters of the TIGER network. Defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TigerConfig {
    /// Model width. Default 128.
    pub d_model: usize,
    /// Attention heads. Default 6.
    pub heads: usize,
    /// Width of each head (attention width is `heads × head_dim`). Default 64.
    pub head_dim: usize,
    /// Feed-forward width. Default 1024.
    pub d_ff: usize,
    /// Encoder layers. Default 4.
    pub encoder_layers: usize,
    /// Decoder layers. Default 4.
    pub decoder_layers: usize,
    /// Dropout rate. Default 0.1.
    pub dropout: f32,
    /// Most recent history items the encoder reads. Default 20.
    pub max_history: usize,
    /// Hash buckets for user tokens. Default 2000.
    pub user_buckets: usize,
    /// LayerNorm epsilon. Default 1e-6.
    pub layer_norm_eps: f64,
    /// Output logits from the input embeddings of the output tokens (T5's tied
    /// embeddings) instead of a separate head. Default false.
    pub tie_embeddings: bool,
}

impl Default for TigerConfig {
    fn default() -> Self {
        TigerConfig {
            d_model: 128,
            heads: 6,
            head_dim: 64,
            d_ff: 1024,
            encoder_layers: 4,
            decoder_layers: 4,
            dropout: 0.1,
            max_history: 20,
            user_buckets: 2000,
            layer_norm_eps: 1e-6,
            tie_embeddings: false,
        }
    }
}

impl TigerConfig {
    /// Checks the values; `prefix` is the dotted config path used in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        for (v, f) in [
            (self.d_model, "d_model"),
            (self.heads, "heads"),
            (self.head_dim, "head_dim"),
            (self.d_ff, "d_ff"),
            (self.decoder_layers, "decoder_layers"),
            (self.max_history, "max_history"),
            (self.user_buckets, "user_buckets"),
        ] {
            if v == 0 {
                return Err(Error::config(format!("{prefix}.{f}"), "must be positive"));
            }
        }
        check::unit_interval(format!("{prefix}.dropout"), self.dropout as f64)?;
        check::positive_real(format!("{prefix}.layer_norm_eps"), self.layer_norm_eps)
    }
}

/// The token layout for a Semantic-ID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// Semantic levels (the collision token is level `levels`).
    pub levels: usize,
    /// Codes per semantic level.
    pub codebook_size: usize,
    /// Collision tokens.
    pub collision_size: usize,
    /// User hash buckets.
    pub user_buckets: usize,
}

impl Vocab {
    /// The layout for `ids` with `user_buckets` user tokens.
    pub fn new(ids: &SemanticIds, user_buckets: usize) -> Self {
        Vocab {
            levels: ids.levels,
            codebook_size: ids.codebook_size,
            collision_size: ids.collision_size.max(1),
            user_buckets,
        }
    }

    /// Tokens per item (`levels + 1`).
    pub fn depth(&self) -> usize {
        self.levels + 1
    }

    /// Number of codes at position `l` of an ID.
    pub fn level_size(&self, l: usize) -> usize {
        if l < self.levels {
            self.codebook_size
        } else {
            self.collision_size
        }
    }

    /// The token of code `code` at position `l`.
    pub fn token(&self, l: usize, code: u16) -> u32 {
        (SPECIALS + l * self.codebook_size + code as usize) as u32
    }

    /// Size of the decoder's output vocabulary (specials and code tokens).
    pub fn n_output(&self) -> usize {
        SPECIALS + self.levels * self.codebook_size + self.collision_size
    }

    /// Size of the full vocabulary (output tokens and user tokens).
    pub fn size(&self) -> usize {
        self.n_output() + self.user_buckets
    }

    /// The hashed user token; `None` (an unknown user) has none.
    pub fn user_token(&self, user: Option<UserId>) -> Option<u32> {
        user.map(|u| {
            let mut x = u as u64 ^ 0x5EED_7163_0000_0001;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            (self.n_output() as u64 + x % self.user_buckets.max(1) as u64) as u32
        })
    }
}
