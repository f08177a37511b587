//! Checks and helpers shared by the baselines.

use llmrec_core::{Error, ItemId, Result};

/// Rejects training data with an item id out of range.
pub(crate) fn check_train(model: &str, train: &[Vec<ItemId>], n_items: usize) -> Result<()> {
    if n_items == 0 {
        return Err(Error::Invalid(format!("{model}: n_items must be positive")));
    }
    if n_items > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{model}: {n_items} items do not fit 32-bit item ids"
        )));
    }
    for (u, seq) in train.iter().enumerate() {
        if let Some(&i) = seq.iter().find(|&&i| i as usize >= n_items) {
            return Err(Error::Invalid(format!(
                "{model}: training user {u} has item {i}, out of range for {n_items} items"
            )));
        }
    }
    Ok(())
}

/// Sorted distinct items of a history, rejecting ids out of range.
pub(crate) fn distinct_items(
    model: &str,
    history: &[ItemId],
    n_items: usize,
) -> Result<Vec<ItemId>> {
    if let Some(&i) = history.iter().find(|&&i| i as usize >= n_items) {
        return Err(Error::Invalid(format!(
            "{model}: history item {i} out of range for {n_items} items"
        )));
    }
    let mut v = history.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Sorted distinct items of every training sequence (ids already checked).
pub(crate) fn distinct_sets(train: &[Vec<ItemId>]) -> Vec<Vec<ItemId>> {
    train
        .iter()
        .map(|s| {
            let mut v = s.clone();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect()
}

/// Rejects an output slice of the wrong length.
pub(crate) fn check_out(model: &str, n_items: usize, len: usize) -> Result<()> {
    if len != n_items {
        return Err(Error::Invalid(format!(
            "{model}: output has {len} entries, expected {n_items}"
        )));
    }
    Ok(())
}

/// Rejects a batch output of the wrong length.
pub(crate) fn check_batch_out(
    model: &str,
    n_items: usize,
    queries: usize,
    len: usize,
) -> Result<()> {
    if len != queries * n_items {
        return Err(Error::Invalid(format!(
            "{model}: batch output has {len} entries, expected {queries} x {n_items}"
        )));
    }
    Ok(())
}

/// A finite, non-negative number (`positive` also rejects zero).
pub(crate) fn check_number(field: &str, value: f64, positive: bool) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::config(
            field,
            format!("expected a finite number, got {value}"),
        ));
    }
    if value < 0.0 || (positive && value == 0.0) {
        let what = if positive { "positive" } else { "non-negative" };
        return Err(Error::config(
            field,
            format!("expected a {what} number, got {value}"),
        ));
    }
    Ok(())
}

/// A positive count.
pub(crate) fn check_count(field: &str, value: usize) -> Result<()> {
    llmrec_core::check::positive(field, value)
}

/// Inverted index: for each item, the users whose distinct set contains it (CSR).
pub(crate) fn inverted_index(sets: &[Vec<ItemId>], n_items: usize) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; n_items + 1];
    for s in sets {
        for &i in s {
            offsets[i as usize + 1] += 1;
        }
    }
    for k in 0..n_items {
        offsets[k + 1] += offsets[k];
    }
    let mut pos = offsets.clone();
    let mut users = vec![0u32; offsets[n_items]];
    for (u, s) in sets.iter().enumerate() {
        for &i in s {
            users[pos[i as usize]] = u as u32;
            pos[i as usize] += 1;
        }
    }
    (offsets, users)
}
