//! A prefix trie over the valid Semantic IDs, for constrained decoding: at every step
//! the beam may only take a code that some real item's ID continues with, so every
//! finished beam is an item.

use std::collections::{HashMap, HashSet};

use llmrec_core::trie::Trie as PrefixTrie;
use llmrec_core::{Error, ItemId, Result};

pub use llmrec_core::trie::NodeId;

/// Prefix trie of equal-length code tuples, one per item (the generic
/// [`llmrec_core::trie::Trie`] with Semantic-ID checks).
#[derive(Debug, Clone)]
pub struct Trie {
    inner: PrefixTrie<u16, ItemId>,
    depth: usize,
}

impl Trie {
    /// The root node.
    pub const ROOT: NodeId = 0;

    /// Builds the trie of `codes[item]`. All tuples must have the same positive length
    /// and be distinct.
    pub fn new(codes: &[Vec<u16>]) -> Result<Self> {
        let depth = codes.first().map(|c| c.len()).unwrap_or(0);
        if depth == 0 {
            return Err(Error::Invalid("trie: no ids, or empty ids".into()));
        }
        let mut inner = PrefixTrie::new();
        for (item, code) in codes.iter().enumerate() {
            if code.len() != depth {
                return Err(Error::Invalid(format!(
                    "trie: item {item} has {} codes, expected {depth}",
                    code.len()
                )));
            }
            if inner.insert(code, item as ItemId).is_err() {
                let other = inner.get(code).copied().unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "trie: items {other} and {item} share the id {code:?}"
                )));
            }
        }
        Ok(Trie { inner, depth })
    }

    /// Length of every ID.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when the trie has only its root (never, for a built trie).
    pub fn is_empty(&self) -> bool {
        self.inner.len() <= 1
    }

    /// The `(code, child)` pairs below `node`, by ascending code.
    pub fn children(&self, node: NodeId) -> &[(u16, NodeId)] {
        self.inner.children(node)
    }

    /// The child of `node` along `code`.
    pub fn child(&self, node: NodeId, code: u16) -> Option<NodeId> {
        self.inner.child(node, code)
    }

    /// The node reached by `prefix`, if `prefix` starts some valid ID.
    pub fn walk(&self, prefix: &[u16]) -> Option<NodeId> {
        self.inner.walk(prefix)
    }

    /// The item whose ID ends at `node`.
    pub fn item(&self, node: NodeId) -> Option<ItemId> {
        self.inner.value(node).copied()
    }

    /// The item with exactly this ID.
    pub fn lookup(&self, code: &[u16]) -> Option<ItemId> {
        if code.len() != self.depth {
            return None;
        }
        self.walk(code).and_then(|n| self.item(n))
    }

    /// Number of items whose ID passes through `node` (all items at the root, 1 at a
    /// leaf, 0 for a node that does not exist).
    pub fn items_below(&self, node: NodeId) -> u32 {
        self.inner.below(node)
    }

    /// The nodes (root excluded) every item below which is in `items`, given the ID
    /// table `codes` the trie was built from: the subtrees that a search excluding
    /// `items` need not enter. Items without a valid ID in the trie are ignored, and
    /// repeated items count once.
    pub fn covered(&self, codes: &[Vec<u16>], items: &[ItemId]) -> HashSet<NodeId> {
        let mut hits: HashMap<NodeId, u32> = HashMap::new();
        let mut seen = HashSet::with_capacity(items.len());
        for &i in items {
            let Some(code) = codes.get(i as usize) else {
                continue;
            };
            if code.len() != self.depth || !seen.insert(i) {
                continue;
            }
            // The path of the item's ID, counted only if it ends at that item.
            let mut path = Vec::with_capacity(self.depth);
            let mut node = Self::ROOT;
            for &c in code {
                match self.child(node, c) {
                    Some(n) => node = n,
                    None => break,
                }
                path.push(node);
            }
            if path.len() == self.depth && self.item(node) == Some(i) {
                for n in path {
                    *hits.entry(n).or_insert(0) += 1;
                }
            }
        }
        hits.into_iter()
            .filter(|&(n, k)| k >= self.items_below(n))
            .map(|(n, _)| n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_exactly_the_valid_ids() {
        let codes = vec![vec![0, 1, 0], vec![0, 1, 1], vec![2, 0, 0], vec![0, 3, 0]];
        let t = Trie::new(&codes).unwrap();
        for (i, c) in codes.iter().enumerate() {
            assert_eq!(t.lookup(c), Some(i as ItemId));
        }
        // Every possible tuple over a small alphabet: only the listed ones are admitted.
        let mut admitted = 0;
        for a in 0..4u16 {
            for b in 0..4u16 {
                for c in 0..4u16 {
                    let id = [a, b, c];
                    match t.lookup(&id) {
                        Some(i) => {
                            admitted += 1;
                            assert_eq!(codes[i as usize], id);
                        }
                        None => assert!(!codes.contains(&id.to_vec())),
                    }
                }
            }
        }
        assert_eq!(admitted, codes.len());
        assert!(t.walk(&[0, 1]).is_some());
        assert!(t.walk(&[1]).is_none());
        assert_eq!(
            t.children(Trie::ROOT)
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(t.lookup(&[0, 1]), None, "prefixes are not items");
        assert!(Trie::new(&[vec![1, 2], vec![1, 2]]).is_err());
        assert!(Trie::new(&[vec![1, 2], vec![1]]).is_err());
    }

    #[test]
    fn covered_nodes_are_the_subtrees_holding_only_the_given_items() {
        // 0:[0,1,0] 1:[0,1,1] 2:[2,0,0] 3:[0,3,0]
        let codes = vec![vec![0, 1, 0], vec![0, 1, 1], vec![2, 0, 0], vec![0, 3, 0]];
        let t = Trie::new(&codes).unwrap();
        assert_eq!(t.items_below(Trie::ROOT), 4);
        assert_eq!(t.items_below(t.walk(&[0]).unwrap()), 3);
        assert_eq!(t.items_below(t.walk(&[0, 1]).unwrap()), 2);
        assert_eq!(t.items_below(t.walk(&[0, 1, 1]).unwrap()), 1);
        let node = |p: &[u16]| t.walk(p).unwrap();
        let set = |v: &[NodeId]| v.iter().copied().collect::<HashSet<_>>();
        // Item 0 alone covers only its leaf: [0,1] still leads to item 1.
        assert_eq!(t.covered(&codes, &[0]), set(&[node(&[0, 1, 0])]));
        // Items 0 and 1 (item 0 twice) cover [0,1] but not [0], which leads to item 3.
        assert_eq!(
            t.covered(&codes, &[0, 1, 0]),
            set(&[node(&[0, 1, 0]), node(&[0, 1, 1]), node(&[0, 1])])
        );
        // Item 2 covers its whole branch from the first code.
        assert_eq!(
            t.covered(&codes, &[2]),
            set(&[node(&[2]), node(&[2, 0]), node(&[2, 0, 0])])
        );
        // Unknown items and an empty history cover nothing; the root is never covered.
        assert!(t.covered(&codes, &[9]).is_empty());
        assert!(t.covered(&codes, &[]).is_empty());
        assert!(!t.covered(&codes, &[0, 1, 2, 3]).contains(&Trie::ROOT));
        assert_eq!(t.covered(&codes, &[0, 1, 2, 3]).len(), t.len() - 1);
    }
}
