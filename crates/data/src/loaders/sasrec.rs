//! SASRec-preprocessed ML-1M (`ml-1m.txt` = `sequences.txt`, plus `items.tsv`).

use std::collections::HashMap;
use std::path::Path;

use llmrec_core::{Dataset, Error, Interaction, ItemText, Result};

use super::text::{fields, lines, parse_categories, parse_u64, read_bytes, utf8};
use super::{NumericIds, nonempty_interactions};

/// Expected header of `items.tsv`.
const ITEMS_HEADER: &str = "sas_item_id\tmovielens_movie_id\ttitle\tgenres";

/// Reads `items.tsv` (UTF-8, header [`ITEMS_HEADER`]) into SAS id -> text.
fn read_items(path: &Path) -> Result<HashMap<u64, ItemText>> {
    let bytes = read_bytes(path, &format!("a header `{ITEMS_HEADER}` and item lines"))?;
    let mut out = HashMap::new();
    let mut seen_header = false;
    for (ln, line) in lines(&bytes) {
        let s = utf8(path, ln, line)?;
        if !seen_header {
            let h = s.trim_start_matches('\u{feff}');
            if h != ITEMS_HEADER {
                return Err(Error::parse(
                    path,
                    ln,
                    format!("expected the header `{ITEMS_HEADER}`, found `{h}`"),
                ));
            }
            seen_header = true;
            continue;
        }
        let [id, _movie, title, genres] = fields::<4>(line, b"\t").map_err(|n| {
            Error::parse(
                path,
                ln,
                format!("expected 4 tab-separated fields ({ITEMS_HEADER}), found {n}"),
            )
        })?;
        let id = parse_u64(path, ln, id, "SAS item id")?;
        let title = utf8(path, ln, title)?.trim().to_owned();
        let genres = parse_categories(utf8(path, ln, genres)?);
        let t = ItemText {
            title,
            categories: genres,
            brand: None,
        };
        if out.insert(id, t).is_some() {
            return Err(Error::parse(
                path,
                ln,
                format!("duplicate SAS item id {id}"),
            ));
        }
    }
    Ok(out)
}

/// Loads SASRec's ML-1M: `sequences` has one `user item` pair per line
/// (space-separated SAS ids, chronological within each user) and `items`
/// (optional) is a UTF-8 TSV with header
/// `sas_item_id movielens_movie_id title genres`. Users and items are ordered
/// by SAS id (`1..=n` -> `0..n`) and raw ids are the SAS ids. Timestamps are the
/// 0-based position within each user's sequence. Without `items` (or when the
/// file is absent) titles are `item <raw id>` and a warning goes to stderr.
pub fn load_sasrec_from_files(sequences: &Path, items: Option<&Path>) -> Result<Dataset> {
    let bytes = read_bytes(sequences, "`user item` lines")?;
    let mut pairs: Vec<(u64, u64)> = Vec::with_capacity(bytes.len() / 8);
    for (ln, line) in lines(&bytes) {
        let mut it = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|f| !f.is_empty());
        let (Some(u), Some(i), None) = (it.next(), it.next(), it.next()) else {
            let n = line
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty())
                .count();
            return Err(Error::parse(
                sequences,
                ln,
                format!("expected 2 space-separated fields `user item`, found {n}"),
            ));
        };
        pairs.push((
            parse_u64(sequences, ln, u, "user id")?,
            parse_u64(sequences, ln, i, "item id")?,
        ));
    }
    nonempty_interactions(sequences, pairs.len(), "`user item` lines")?;
    let users = NumericIds::new(pairs.iter().map(|p| p.0).collect());
    let item_ids = NumericIds::new(pairs.iter().map(|p| p.1).collect());

    let texts = match items {
        Some(p) if p.exists() => Some((p, read_items(p)?)),
        _ => None,
    };
    let item_text = match texts {
        Some((p, mut map)) => {
            let mut v = Vec::with_capacity(item_ids.raw().len());
            for &raw in item_ids.raw() {
                let t = map.remove(&raw).ok_or_else(|| {
                    Error::parse(
                        p,
                        0,
                        format!("SAS item {raw} occurs in the sequences but has no line here"),
                    )
                })?;
                v.push(t);
            }
            v
        }
        None => {
            eprintln!(
                "warning: {}: no items.tsv next to it; item titles fall back to `item <id>`",
                sequences.display()
            );
            item_ids
                .raw()
                .iter()
                .map(|raw| ItemText {
                    title: format!("item {raw}"),
                    ..ItemText::default()
                })
                .collect()
        }
    };

    let mut pos = vec![0i64; users.raw().len()];
    let mut xs = Vec::with_capacity(pairs.len());
    for &(u, i) in &pairs {
        let (Some(user), Some(item)) = (users.index(u), item_ids.index(i)) else {
            return Err(Error::Invalid(format!(
                "internal: id ({u}, {i}) missing from id maps"
            )));
        };
        let p = &mut pos[user as usize];
        xs.push(Interaction {
            user,
            item,
            rating: None,
            timestamp: Some(*p),
        });
        *p += 1;
    }
    Dataset::from_source_order(
        "ml-1m-sas",
        users.id_map()?,
        item_ids.id_map()?,
        xs,
        item_text,
    )
}
