//! Preprocessing: deduplication, k-core filtering, dense id remapping and truncation.
//!
//! Every step keeps each user's chronological order (and so the source order
//! of ties) and keeps raw ids for display.

use std::collections::HashSet;

use llmrec_core::{Dataset, IdMap, Interaction, ItemText, Result};
use serde::{Deserialize, Serialize};

/// Which duplicate (same user, same item) interaction to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepDuplicate {
    /// Keep the first occurrence in time.
    #[default]
    First,
    /// Keep the last occurrence in time.
    Last,
}

/// Preprocessing settings. The defaults change nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Remove repeated (user, item) pairs.
    pub dedup: bool,
    /// Which duplicate to keep when `dedup` is on.
    pub keep: KeepDuplicate,
    /// Drop users with fewer interactions (0 = off). Applied iteratively with `item_core`.
    pub user_core: usize,
    /// Drop items with fewer interactions (0 = off).
    pub item_core: usize,
    /// Keep only each user's most recent `max_len` interactions (0 = off).
    pub max_len: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            dedup: false,
            keep: KeepDuplicate::First,
            user_core: 0,
            item_core: 0,
            max_len: 0,
        }
    }
}

/// Applies `cfg`: dedup, then k-core, then truncation, then dense remapping.
pub fn preprocess(ds: &Dataset, cfg: &PreprocessConfig) -> Result<Dataset> {
    let mut xs = ds.interactions.clone();
    if cfg.dedup {
        xs = dedup(&xs, cfg.keep);
    }
    if cfg.user_core > 0 || cfg.item_core > 0 {
        xs = k_core(
            &xs,
            ds.n_users(),
            ds.n_items(),
            cfg.user_core,
            cfg.item_core,
        );
    }
    if cfg.max_len > 0 {
        xs = truncate(&xs, cfg.max_len);
    }
    remap(ds, xs)
}

/// Removes repeated (user, item) pairs, keeping the first or last in time.
pub fn dedup(xs: &[Interaction], keep: KeepDuplicate) -> Vec<Interaction> {
    let mut seen = HashSet::with_capacity(xs.len());
    match keep {
        KeepDuplicate::First => xs
            .iter()
            .filter(|x| seen.insert((x.user, x.item)))
            .copied()
            .collect(),
        KeepDuplicate::Last => {
            let mut out: Vec<Interaction> = xs
                .iter()
                .rev()
                .filter(|x| seen.insert((x.user, x.item)))
                .copied()
                .collect();
            out.reverse();
            out
        }
    }
}

/// Iteratively removes users with fewer than `user_core` and items with fewer
/// than `item_core` interactions until both hold.
pub fn k_core(
    xs: &[Interaction],
    n_users: usize,
    n_items: usize,
    user_core: usize,
    item_core: usize,
) -> Vec<Interaction> {
    let mut cur: Vec<Interaction> = xs.to_vec();
    loop {
        let mut uc = vec![0usize; n_users];
        let mut ic = vec![0usize; n_items];
        for x in &cur {
            uc[x.user as usize] += 1;
            ic[x.item as usize] += 1;
        }
        let before = cur.len();
        cur.retain(|x| uc[x.user as usize] >= user_core && ic[x.item as usize] >= item_core);
        if cur.len() == before {
            return cur;
        }
    }
}

/// Keeps each user's most recent `max_len` interactions.
pub fn truncate(xs: &[Interaction], max_len: usize) -> Vec<Interaction> {
    let mut out = Vec::with_capacity(xs.len());
    let mut start = 0;
    while start < xs.len() {
        let mut end = start;
        while end < xs.len() && xs[end].user == xs[start].user {
            end += 1;
        }
        let from = end.saturating_sub(max_len).max(start);
        out.extend_from_slice(&xs[from..end]);
        start = end;
    }
    out
}

/// Rebuilds dense ids over the users and items still present, in their old
/// index order, keeping raw ids and item text.
pub fn remap(ds: &Dataset, xs: Vec<Interaction>) -> Result<Dataset> {
    let mut user_new = vec![u32::MAX; ds.n_users()];
    let mut item_new = vec![u32::MAX; ds.n_items()];
    for x in &xs {
        user_new[x.user as usize] = 0;
        item_new[x.item as usize] = 0;
    }
    let mut users = Vec::new();
    for (old, slot) in user_new.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = users.len() as u32;
            users.push(ds.users.raw(old as u32).to_owned());
        }
    }
    let mut items = Vec::new();
    let mut text: Vec<ItemText> = Vec::new();
    for (old, slot) in item_new.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = items.len() as u32;
            items.push(ds.items.raw(old as u32).to_owned());
            text.push(ds.item_text[old].clone());
        }
    }
    let xs = xs
        .into_iter()
        .map(|x| Interaction {
            user: user_new[x.user as usize],
            item: item_new[x.item as usize],
            ..x
        })
        .collect();
    Dataset::from_source_order(
        ds.name.clone(),
        IdMap::from_raw(users)?,
        IdMap::from_raw(items)?,
        xs,
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(pairs: &[(&str, &str)]) -> Dataset {
        let mut u = IdMap::new();
        let mut i = IdMap::new();
        let xs: Vec<Interaction> = pairs
            .iter()
            .map(|(a, b)| Interaction {
                user: u.intern(a),
                item: i.intern(b),
                rating: None,
                timestamp: None,
            })
            .collect();
        let text = (0..i.len())
            .map(|k| ItemText {
                title: format!("t{}", i.raw(k as u32)),
                ..Default::default()
            })
            .collect();
        Dataset::from_source_order("t", u, i, xs, text).unwrap()
    }

    fn seqs(d: &Dataset) -> Vec<Vec<String>> {
        d.sequences()
            .iter()
            .map(|s| s.iter().map(|&i| d.items.raw(i).to_owned()).collect())
            .collect()
    }

    #[test]
    fn dedup_first_and_last() {
        let d = ds(&[("u", "a"), ("u", "b"), ("u", "a"), ("u", "c")]);
        let first = preprocess(
            &d,
            &PreprocessConfig {
                dedup: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(seqs(&first), [["a", "b", "c"]]);
        let last = preprocess(
            &d,
            &PreprocessConfig {
                dedup: true,
                keep: KeepDuplicate::Last,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(seqs(&last), [["b", "a", "c"]]);
    }

    #[test]
    fn k_core_is_iterative() {
        // Item z has 2 users; user w has 2 items. With 2-core on both, removing
        // item y (1 user) drops w to 1 item, which then removes w and z's count.
        let d = ds(&[
            ("u", "x"),
            ("u", "z"),
            ("v", "x"),
            ("v", "z"),
            ("w", "y"),
            ("w", "x"),
        ]);
        let out = preprocess(
            &d,
            &PreprocessConfig {
                user_core: 2,
                item_core: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(out.n_users(), 2);
        assert_eq!(out.n_items(), 2);
        assert_eq!(seqs(&out), [["x", "z"], ["x", "z"]]);
        // Raw ids and text follow the items.
        assert_eq!(out.items.raw(1), "z");
        assert_eq!(out.item_text[1].title, "tz");
    }

    #[test]
    fn truncation_keeps_most_recent() {
        let d = ds(&[("u", "a"), ("u", "b"), ("u", "c"), ("v", "a")]);
        let out = preprocess(
            &d,
            &PreprocessConfig {
                max_len: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(seqs(&out), [vec!["b", "c"], vec!["a"]]);
    }
}
