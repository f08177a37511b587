//! Synthetic datasets with known structure, for tests and smoke runs.

use llmrec_core::{Dataset, IdMap, Interaction, ItemText, Rng};

/// Users walk a cycle: item `i` is always followed by item `(i + 1) % n_items`,
/// from a random start. A perfect sequential model gets HR@1 = 1.
pub fn next_item_rule(n_users: usize, n_items: usize, len: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut xs = Vec::with_capacity(n_users * len);
    for u in 0..n_users {
        let start = rng.index(n_items);
        for t in 0..len {
            xs.push(Interaction {
                user: u as u32,
                item: ((start + t) % n_items) as u32,
                rating: None,
                timestamp: Some(t as i64),
            });
        }
    }
    build("synthetic-next-item", n_users, n_items, xs)
}

/// Two user groups, each drawing items only from its own half of the catalogue,
/// with popularity skew inside each half. A collaborative model separates them.
pub fn two_blocks(n_users: usize, n_items: usize, len: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let half = (n_items / 2).max(1);
    let mut xs = Vec::with_capacity(n_users * len);
    for u in 0..n_users {
        let offset = if u % 2 == 0 { 0 } else { half };
        let mut used = std::collections::HashSet::new();
        let mut t = 0;
        while t < len.min(half) {
            // Skewed: min of two uniforms favours low ids.
            let i = rng.index(half).min(rng.index(half)) + offset;
            if used.insert(i) {
                xs.push(Interaction {
                    user: u as u32,
                    item: i as u32,
                    rating: Some((1 + rng.index(5)) as f32),
                    timestamp: Some(t as i64),
                });
                t += 1;
            }
        }
    }
    build("synthetic-two-blocks", n_users, n_items, xs)
}

fn build(name: &str, n_users: usize, n_items: usize, xs: Vec<Interaction>) -> Dataset {
    let users: Vec<String> = (0..n_users).map(|u| format!("u{u}")).collect();
    let items: Vec<String> = (0..n_items).map(|i| format!("i{i}")).collect();
    let text = (0..n_items)
        .map(|i| ItemText {
            title: format!("Item {i}"),
            categories: vec![format!("group {}", i * 2 / n_items.max(1))],
            brand: None,
        })
        .collect();
    // Ids are unique by construction and every interaction is in range.
    Dataset::from_source_order(
        name,
        IdMap::from_raw(users).unwrap_or_default(),
        IdMap::from_raw(items).unwrap_or_default(),
        xs,
        text,
    )
    .unwrap_or_else(|e| panic!("synthetic dataset construction is infallible: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_item_rule_holds() {
        let d = next_item_rule(5, 7, 10, 1);
        for s in d.sequences() {
            assert_eq!(s.len(), 10);
            for w in s.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 7);
            }
        }
    }

    #[test]
    fn two_blocks_stay_in_their_block() {
        let d = two_blocks(10, 20, 5, 2);
        for (u, s) in d.sequences().iter().enumerate() {
            assert_eq!(s.len(), 5);
            let lo = if u % 2 == 0 { 0 } else { 10 };
            assert!(s.iter().all(|&i| (lo..lo + 10).contains(&(i as usize))));
        }
    }
}
