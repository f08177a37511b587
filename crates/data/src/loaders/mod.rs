//! Dataset loaders: one module per dataset family plus a generic loader.
//!
//! Every loader of implicit interactions returns an [`llmrec_core::Dataset`] built with
//! [`Dataset::from_source_order`](llmrec_core::Dataset::from_source_order):
//! interactions are grouped by user and kept in chronological order; ties keep
//! the order of the source file and are never broken by item id. [`explicit`] reads
//! MovieLens 1M's star ratings, profiles and movies for rating and CTR tasks. Bad input is
//! an [`Error::Parse`](llmrec_core::Error::Parse) naming the file, the 1-based
//! line (0 when the whole file is at fault) and what was expected.
//!
//! Files may be gzip-compressed (detected by their magic bytes).

mod amazon;
pub mod explicit;
mod generic;
mod movielens;
mod sasrec;
pub(crate) mod text;

pub use amazon::load_amazon_p5;
pub use explicit::{ExplicitRatings, Movie, Rated, UserProfile, load_explicit, load_ml1m_explicit};
pub use generic::{Column, GenericSpec, ItemTextCsv, ItemTextSpec, load_generic};
pub use movielens::{load_ml1m_from_files, load_ml100k_from_files};
pub use sasrec::load_sasrec_from_files;
pub use text::{decode_html_entities, parse_categories};

use std::path::Path;

use llmrec_core::{Error, IdMap, Result};

/// Dense ids for numeric raw ids, ordered by the numeric value
/// (so `1..=n` maps to `0..n`). Raw ids are the decimal strings.
pub(crate) struct NumericIds {
    sorted: Vec<u64>,
}

impl NumericIds {
    /// Distinct ids of `all`, sorted ascending.
    pub(crate) fn new(mut all: Vec<u64>) -> Self {
        all.sort_unstable();
        all.dedup();
        NumericIds { sorted: all }
    }

    /// Dense index of a raw id present in the set.
    pub(crate) fn index(&self, raw: u64) -> Option<u32> {
        self.sorted.binary_search(&raw).ok().map(|i| i as u32)
    }

    /// Raw ids in dense order.
    pub(crate) fn raw(&self) -> &[u64] {
        &self.sorted
    }

    /// The id map (raw ids as decimal strings).
    pub(crate) fn id_map(&self) -> Result<IdMap> {
        IdMap::from_raw(self.sorted.iter().map(u64::to_string).collect())
    }
}

/// A dataset needs at least one interaction.
pub(crate) fn nonempty_interactions(path: &Path, n: usize, expected: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::parse(
            path,
            0,
            format!("no interactions found; expected {expected}"),
        ));
    }
    Ok(())
}
