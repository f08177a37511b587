//! Ids, interactions, item text and the in-memory [`Dataset`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Dense user index, `0..n_users`.
pub type UserId = u32;
/// Dense item index, `0..n_items`.
pub type ItemId = u32;

/// A bijection between raw ids (as in the source files) and dense indices.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdMap {
    raw: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl IdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from raw ids in index order. Duplicates are an error.
    pub fn from_raw(raw: Vec<String>) -> Result<Self> {
        let mut index = HashMap::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            if index.insert(r.clone(), i as u32).is_some() {
                return Err(Error::Invalid(format!("duplicate raw id `{r}` in id map")));
            }
        }
        Ok(IdMap { raw, index })
    }

    /// Returns the dense index of `raw`, inserting it if new.
    pub fn intern(&mut self, raw: &str) -> u32 {
        if let Some(&i) = self.index.get(raw) {
            return i;
        }
        let i = self.raw.len() as u32;
        self.raw.push(raw.to_owned());
        self.index.insert(raw.to_owned(), i);
        i
    }

    /// Dense index of a raw id.
    pub fn get(&self, raw: &str) -> Option<u32> {
        self.index.get(raw).copied()
    }

    /// Raw id of a dense index.
    pub fn raw(&self, idx: u32) -> &str {
        &self.raw[idx as usize]
    }

    /// All raw ids in index order.
    pub fn raw_ids(&self) -> &[String] {
        &self.raw
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Rebuilds the lookup index after deserialisation.
    pub fn rebuild_index(&mut self) {
        self.index = self
            .raw
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i as u32))
            .collect();
    }
}

/// The text of one item, as LLM prompts and text embedders see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ItemText {
    /// Display title (HTML entities decoded).
    pub title: String,
    /// Genres (MovieLens) or categories (Amazon).
    pub categories: Vec<String>,
    /// Brand, where the source has one.
    pub brand: Option<String>,
}

impl ItemText {
    /// One line for prompts and embedders: `Title (Genre, Genre; brand: Brand)`.
    pub fn to_text(&self) -> String {
        let mut s = self.title.clone();
        let mut extra = Vec::new();
        if !self.categories.is_empty() {
            extra.push(self.categories.join(", "));
        }
        if let Some(b) = &self.brand {
            extra.push(format!("brand: {b}"));
        }
        if !extra.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push('(');
            s.push_str(&extra.join("; "));
            s.push(')');
        }
        s
    }
}

/// One user-item event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Dense user index.
    pub user: UserId,
    /// Dense item index.
    pub item: ItemId,
    /// Explicit rating, where the source has one.
    pub rating: Option<f32>,
    /// Timestamp (seconds or a position), where the source has one.
    pub timestamp: Option<i64>,
}

/// A loaded dataset: id maps, interactions in per-user chronological order, and item text.
///
/// Invariant: `interactions` are grouped by user (ascending dense user index)
/// and, within a user, in chronological order. Ties in time keep the order of
/// the source file; they are never broken by item id.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Registry name (`ml-1m-sas`) or a user-chosen name.
    pub name: String,
    /// Raw user ids.
    pub users: IdMap,
    /// Raw item ids.
    pub items: IdMap,
    /// All interactions, grouped by user, chronological within a user.
    pub interactions: Vec<Interaction>,
    /// Text of every item, indexed by dense item id.
    pub item_text: Vec<ItemText>,
}

impl Dataset {
    /// Builds a dataset from interactions in *source order*.
    ///
    /// Interactions are grouped by user with a stable sort on
    /// `(user, timestamp)`: where timestamps tie or are absent, the source order
    /// is kept.
    pub fn from_source_order(
        name: impl Into<String>,
        users: IdMap,
        items: IdMap,
        mut interactions: Vec<Interaction>,
        item_text: Vec<ItemText>,
    ) -> Result<Self> {
        if item_text.len() != items.len() {
            return Err(Error::Invalid(format!(
                "item text has {} entries for {} items",
                item_text.len(),
                items.len()
            )));
        }
        for x in &interactions {
            if x.user as usize >= users.len() || x.item as usize >= items.len() {
                return Err(Error::Invalid(format!(
                    "interaction ({}, {}) out of range ({} users, {} items)",
                    x.user,
                    x.item,
                    users.len(),
                    items.len()
                )));
            }
        }
        // Stable: equal keys keep their source order.
        interactions.sort_by_key(|x| (x.user, x.timestamp.unwrap_or(i64::MIN)));
        Ok(Dataset {
            name: name.into(),
            users,
            items,
            interactions,
            item_text,
        })
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Per-user item sequences in chronological order, indexed by dense user id.
    pub fn sequences(&self) -> Vec<Vec<ItemId>> {
        let mut seqs = vec![Vec::new(); self.n_users()];
        for x in &self.interactions {
            seqs[x.user as usize].push(x.item);
        }
        seqs
    }

    /// Per-user interactions (with ratings and timestamps), chronological.
    pub fn user_interactions(&self) -> Vec<&[Interaction]> {
        let mut out = Vec::with_capacity(self.n_users());
        let mut start = 0;
        for u in 0..self.n_users() as u32 {
            let mut end = start;
            while end < self.interactions.len() && self.interactions[end].user == u {
                end += 1;
            }
            out.push(&self.interactions[start..end]);
            start = end;
        }
        out
    }

    /// A stable fingerprint of the interaction data (sha256 hex of the ordered
    /// `(user, item)` pairs and the id-map sizes). Checkpoints and artifacts
    /// record it, so an artifact made on other data is refused.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.n_users() as u64).to_le_bytes());
        h.update((self.n_items() as u64).to_le_bytes());
        for x in &self.interactions {
            h.update(x.user.to_le_bytes());
            h.update(x.item.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Summary statistics.
    pub fn stats(&self) -> DatasetStats {
        DatasetStats::from_sequences(&self.name, self.n_items(), &self.sequences())
    }
}

/// Summary statistics of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetStats {
    /// Dataset name.
    pub name: String,
    /// Users with at least one interaction... and without (all users in the map).
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Interactions.
    pub interactions: usize,
    /// interactions / (users * items).
    pub density: f64,
    /// Sequence-length percentiles: min, p25, p50, p75, p90, p99, max.
    pub seq_len: SeqLenPercentiles,
}

/// Sequence-length percentiles (nearest-rank).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeqLenPercentiles {
    /// Shortest sequence.
    pub min: usize,
    /// 25th percentile.
    pub p25: usize,
    /// Median.
    pub p50: usize,
    /// 75th percentile.
    pub p75: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest sequence.
    pub max: usize,
    /// Mean length.
    pub mean: f64,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=100).
pub fn percentile(sorted: &[usize], q: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl DatasetStats {
    /// Statistics of per-user sequences.
    pub fn from_sequences(name: &str, n_items: usize, seqs: &[Vec<ItemId>]) -> Self {
        let mut lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        lens.sort_unstable();
        let interactions: usize = lens.iter().sum();
        let users = seqs.len();
        let density = if users == 0 || n_items == 0 {
            0.0
        } else {
            interactions as f64 / (users as f64 * n_items as f64)
        };
        DatasetStats {
            name: name.to_owned(),
            users,
            items: n_items,
            interactions,
            density,
            seq_len: SeqLenPercentiles {
                min: lens.first().copied().unwrap_or(0),
                p25: percentile(&lens, 25.0),
                p50: percentile(&lens, 50.0),
                p75: percentile(&lens, 75.0),
                p90: percentile(&lens, 90.0),
                p99: percentile(&lens, 99.0),
                max: lens.last().copied().unwrap_or(0),
                mean: if users == 0 {
                    0.0
                } else {
                    interactions as f64 / users as f64
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_time_order_keeps_source_order_on_ties() {
        let mut users = IdMap::new();
        let mut items = IdMap::new();
        let u = users.intern("u");
        let raw = [("b", 5), ("a", 5), ("c", 1), ("d", 5)];
        let xs: Vec<Interaction> = raw
            .iter()
            .map(|(i, t)| Interaction {
                user: u,
                item: items.intern(i),
                rating: None,
                timestamp: Some(*t),
            })
            .collect();
        let text = vec![ItemText::default(); items.len()];
        let d = Dataset::from_source_order("t", users, items, xs, text).unwrap();
        let seq: Vec<&str> = d.sequences()[0].iter().map(|&i| d.items.raw(i)).collect();
        // c is earliest; b, a, d tie and keep file order (not id order a < b).
        assert_eq!(seq, ["c", "b", "a", "d"]);
    }

    #[test]
    fn percentiles_by_hand() {
        let v: Vec<usize> = (1..=10).collect();
        assert_eq!(percentile(&v, 50.0), 5);
        assert_eq!(percentile(&v, 90.0), 9);
        assert_eq!(percentile(&v, 99.0), 10);
        assert_eq!(percentile(&v, 0.0), 1);
        let s = DatasetStats::from_sequences("x", 4, &[vec![0, 1], vec![2, 3, 0, 1]]);
        assert_eq!(s.interactions, 6);
        assert!((s.density - 6.0 / 8.0).abs() < 1e-12);
        assert_eq!(s.seq_len.max, 4);
    }

    #[test]
    fn item_text_line() {
        let t = ItemText {
            title: "Toy Story (1995)".into(),
            categories: vec!["Animation".into(), "Comedy".into()],
            brand: None,
        };
        assert_eq!(t.to_text(), "Toy Story (1995) (Animation, Comedy)");
        let b = ItemText {
            title: "Lipstick".into(),
            categories: vec![],
            brand: Some("OPI".into()),
        };
        assert_eq!(b.to_text(), "Lipstick (brand: OPI)");
    }

    #[test]
    fn idmap_roundtrip_and_duplicates() {
        let mut m = IdMap::new();
        assert_eq!(m.intern("x"), 0);
        assert_eq!(m.intern("y"), 1);
        assert_eq!(m.intern("x"), 0);
        assert_eq!(m.raw(1), "y");
        assert!(IdMap::from_raw(vec!["a".into(), "a".into()]).is_err());
    }
}
