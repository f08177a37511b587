//! Engagement neighbours: the items with the highest personalized PageRank from an
//! item on the co-engagement graph of the **training** interactions.

use llmrec_core::graph::{ItemGraph, PageRankConfig, top_neighbors};
use llmrec_core::{ItemId, Result, SequenceSplit};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Settings of the neighbour selection (documented in `configs/llm_rec.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementConfig {
    /// Neighbours quoted in an engagement prompt (T). Default 5.
    pub neighbors: usize,
    /// Each item keeps its this many heaviest co-engagement edges before PageRank
    /// (0: all). Default 50.
    pub max_edges: usize,
    /// Personalized PageRank settings.
    pub pagerank: PageRankConfig,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        EngagementConfig {
            neighbors: 5,
            max_edges: 50,
            pagerank: PageRankConfig::default(),
        }
    }
}

impl EngagementConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        llmrec_core::check::positive("engagement.neighbors", self.neighbors)?;
        self.pagerank.validate("engagement.pagerank")
    }
}

/// The co-engagement graph of `split`'s training sequences (validation and test
/// items never make an edge).
pub fn training_graph(split: &SequenceSplit, cfg: &EngagementConfig) -> Result<ItemGraph> {
    ItemGraph::co_engagement(&split.train_sequences(), split.n_items, cfg.max_edges)
}

/// The engagement neighbours of `items` on `graph`, best first, as
/// `(item, PageRank score)`; an item without training edges has none.
pub fn neighbors(
    graph: &ItemGraph,
    items: &[ItemId],
    cfg: &EngagementConfig,
) -> Result<Vec<Vec<(ItemId, f64)>>> {
    cfg.validate()?;
    items
        .par_iter()
        .map(|&i| top_neighbors(graph, i, cfg.neighbors, &cfg.pagerank))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmrec_core::UserSplit;

    #[test]
    fn neighbours_come_from_training_edges_only_and_never_the_item() {
        // Item 4 co-occurs with 0 only through validation and test interactions.
        let split = SequenceSplit {
            name: "leave-one-out".into(),
            n_items: 6,
            users: vec![
                UserSplit {
                    train: vec![0, 1, 2],
                    valid: vec![4],
                    test: vec![5],
                },
                UserSplit {
                    train: vec![1, 0, 3],
                    valid: vec![4],
                    test: vec![4],
                },
                UserSplit {
                    train: vec![2, 3],
                    valid: vec![0],
                    test: vec![5],
                },
            ],
        };
        let cfg = EngagementConfig::default();
        let g = training_graph(&split, &cfg).unwrap();
        let all: Vec<ItemId> = (0..6).collect();
        let nb = neighbors(&g, &all, &cfg).unwrap();
        for (i, list) in nb.iter().enumerate() {
            assert!(list.iter().all(|&(j, _)| j as usize != i), "{i}: {list:?}");
            assert!(list.iter().all(|&(j, _)| j != 4 && j != 5), "{i}: {list:?}");
        }
        // Items seen only in validation or test have no neighbours.
        assert!(nb[4].is_empty() && nb[5].is_empty());
        // 0 shares two users with 1: 1 is its first neighbour.
        assert_eq!(nb[0][0].0, 1);
        assert_eq!(nb[0].len(), 3);
    }
}
