//! A prefix trie over sequences of small keys, for constrained decoding: TIGER's
//! Semantic IDs (codes → item) and the local LLM's allowed answers (tokens → answer).
//!
//! Nodes live in one vector and children are kept sorted by key, so walks are binary
//! searches and iteration over children is in ascending key order (deterministic).

/// Index of a trie node; the root is [`Trie::ROOT`].
pub type NodeId = u32;

#[derive(Debug, Clone)]
struct Node<K, V> {
    /// (key, child), sorted by key.
    children: Vec<(K, NodeId)>,
    /// The value of the sequence that ends here.
    value: Option<V>,
    /// Values stored at or below this node.
    below: u32,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: Vec::new(),
            value: None,
            below: 0,
        }
    }
}

/// Prefix trie mapping key sequences to values.
#[derive(Debug, Clone)]
pub struct Trie<K, V> {
    nodes: Vec<Node<K, V>>,
}

impl<K: Copy + Ord, V> Default for Trie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Ord, V> Trie<K, V> {
    /// The root node.
    pub const ROOT: NodeId = 0;

    /// An empty trie (only the root).
    pub fn new() -> Self {
        Trie {
            nodes: vec![Node::new()],
        }
    }

    /// Stores `value` at the end of `key`. If `key` already holds a value, nothing
    /// changes and the value is handed back.
    pub fn insert(&mut self, key: &[K], value: V) -> Result<NodeId, V> {
        if let Some(n) = self.walk(key)
            && self.nodes[n as usize].value.is_some()
        {
            return Err(value);
        }
        let mut node = Self::ROOT as usize;
        self.nodes[node].below += 1;
        for &k in key {
            let next = match self.nodes[node]
                .children
                .binary_search_by(|(c, _)| c.cmp(&k))
            {
                Ok(p) => self.nodes[node].children[p].1 as usize,
                Err(p) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::new());
                    self.nodes[node].children.insert(p, (k, id as NodeId));
                    id
                }
            };
            node = next;
            self.nodes[node].below += 1;
        }
        self.nodes[node].value = Some(value);
        Ok(node as NodeId)
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the trie holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1 && self.nodes[0].value.is_none()
    }

    /// The `(key, child)` pairs below `node`, by ascending key.
    pub fn children(&self, node: NodeId) -> &[(K, NodeId)] {
        self.nodes
            .get(node as usize)
            .map(|n| n.children.as_slice())
            .unwrap_or(&[])
    }

    /// The child of `node` along `key`.
    pub fn child(&self, node: NodeId, key: K) -> Option<NodeId> {
        let ch = self.children(node);
        ch.binary_search_by(|(c, _)| c.cmp(&key))
            .ok()
            .map(|p| ch[p].1)
    }

    /// The node reached by `prefix`, if some stored sequence starts with it.
    pub fn walk(&self, prefix: &[K]) -> Option<NodeId> {
        prefix
            .iter()
            .try_fold(Self::ROOT, |node, &k| self.child(node, k))
    }

    /// The value of the sequence that ends at `node`.
    pub fn value(&self, node: NodeId) -> Option<&V> {
        self.nodes.get(node as usize).and_then(|n| n.value.as_ref())
    }

    /// The value stored for exactly `key`.
    pub fn get(&self, key: &[K]) -> Option<&V> {
        self.walk(key).and_then(|n| self.value(n))
    }

    /// Values stored at or below `node` (all of them at the root, 0 for a node that
    /// does not exist).
    pub fn below(&self, node: NodeId) -> u32 {
        self.nodes.get(node as usize).map_or(0, |n| n.below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_walks_and_refuses_a_second_value() {
        let mut t: Trie<u32, usize> = Trie::new();
        assert!(t.is_empty());
        t.insert(&[5, 1, 9], 0).unwrap();
        t.insert(&[5, 2], 1).unwrap();
        t.insert(&[5], 2).unwrap();
        assert_eq!(t.insert(&[5, 2], 7), Err(7));
        assert_eq!(t.get(&[5, 2]), Some(&1));
        assert_eq!(t.get(&[5]), Some(&2));
        assert_eq!(t.get(&[5, 1]), None, "a prefix holds no value");
        assert_eq!(t.get(&[4]), None);
        let five = t.walk(&[5]).unwrap();
        let keys: Vec<u32> = t.children(five).iter().map(|c| c.0).collect();
        assert_eq!(keys, [1, 2], "children in ascending key order");
        assert_eq!((t.below(Trie::<u32, usize>::ROOT), t.below(five)), (3, 3));
        assert_eq!(t.below(t.walk(&[5, 1]).unwrap()), 1);
        assert_eq!(t.len(), 5);
        assert!(!t.is_empty());
    }
}
