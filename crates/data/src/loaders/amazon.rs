//! Amazon Beauty in the P5 preprocessing, with PLRec item text.

use std::collections::HashMap;
use std::path::Path;

use llmrec_core::{Dataset, Error, Interaction, ItemText, Result};

use super::text::{
    decode_html_entities as decode_once, fields, lines, parse_categories, parse_u64, read_bytes,
    utf8,
};
use super::{NumericIds, nonempty_interactions};

/// Decodes HTML entities twice: the metadata has a few doubly encoded
/// references (`Kirk&amp;#39;s`, `&amp;reg;`) that should read `Kirk's`, `®`.
fn decode_html_entities(s: &str) -> String {
    let once = decode_once(s);
    if once.contains('&') {
        decode_once(&once)
    } else {
        once
    }
}

/// Maps csv crate errors to a parse error on `path`.
pub(crate) fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields (as in the first row), found {len}"),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!(
                "invalid UTF-8 in field {}; expected UTF-8 text",
                err.field() + 1
            )
        }
        _ => e.to_string(),
    };
    Error::parse(path, line, message)
}

/// Reads `item_id_map.tsv` (`p5_item_id asin plrec_item_id`) into P5 id -> PLRec id.
fn read_id_map(path: &Path) -> Result<HashMap<u64, u64>> {
    const HEADER: &str = "p5_item_id\tasin\tplrec_item_id";
    let bytes = read_bytes(path, &format!("a header `{HEADER}` and one line per item"))?;
    let mut out = HashMap::new();
    let mut header = true;
    for (ln, line) in lines(&bytes) {
        if header {
            let h = utf8(path, ln, line)?;
            if h.trim_start_matches('\u{feff}') != HEADER {
                return Err(Error::parse(
                    path,
                    ln,
                    format!("expected the header `{HEADER}`, found `{h}`"),
                ));
            }
            header = false;
            continue;
        }
        let [p5, _asin, plrec] = fields::<3>(line, b"\t").map_err(|n| {
            Error::parse(
                path,
                ln,
                format!("expected 3 tab-separated fields ({HEADER}), found {n}"),
            )
        })?;
        let p5 = parse_u64(path, ln, p5, "P5 item id")?;
        let plrec = parse_u64(path, ln, plrec, "PLRec item id")?;
        if out.insert(p5, plrec).is_some() {
            return Err(Error::parse(path, ln, format!("duplicate P5 item id {p5}")));
        }
    }
    Ok(out)
}

/// Reads PLRec's `item_description.csv` (tab-separated, CSV double-quote
/// quoting, RecBole header `item_id:token title:token …`) into PLRec id -> text.
fn read_descriptions(path: &Path) -> Result<HashMap<u64, ItemText>> {
    let bytes = read_bytes(
        path,
        "a RecBole item file with a header `item_id:token\ttitle:token\t…`",
    )?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .has_headers(true)
        .from_reader(&bytes[..]);
    let headers = rdr.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.split(':').next() == Some(name))
    };
    let (Some(id_col), Some(title_col)) = (col("item_id"), col("title")) else {
        return Err(Error::parse(
            path,
            1,
            format!(
                "expected a header with `item_id:token` and `title:token` columns, found `{}`",
                headers.iter().collect::<Vec<_>>().join("\t")
            ),
        ));
    };
    let cat_col = col("categories");
    let brand_col = col("brand");
    let mut out = HashMap::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let ln = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let field = |c: usize| rec.get(c).unwrap_or("");
        let id = parse_u64(path, ln, field(id_col).as_bytes(), "item_id")?;
        let categories = cat_col
            .map(|c| {
                parse_categories(field(c))
                    .iter()
                    .map(|s| decode_html_entities(s))
                    .collect()
            })
            .unwrap_or_default();
        let brand = brand_col
            .map(|c| decode_html_entities(field(c).trim()))
            .filter(|b| !b.is_empty());
        let t = ItemText {
            title: decode_html_entities(field(title_col).trim()),
            categories,
            brand,
        };
        if out.insert(id, t).is_some() {
            return Err(Error::parse(path, ln, format!("duplicate item_id {id}")));
        }
    }
    Ok(out)
}

/// Loads Amazon Beauty as preprocessed by P5: `sequential_data` has one line
/// per user, `user_id item_id item_id …` (space-separated P5 ids, chronological).
/// Item text comes from PLRec's `item_description` joined through
/// `item_id_map` (`p5_item_id asin plrec_item_id`). Titles, categories and
/// brands have HTML entities decoded (doubly encoded ones such as
/// `&amp;#39;` too); an empty brand is `None`; the few empty
/// titles stay empty.
///
/// Users and items are ordered by P5 id and raw ids are the P5 ids (as
/// strings). Timestamps are the 0-based position within each user's sequence.
pub fn load_amazon_p5(
    name: &str,
    sequential_data: &Path,
    item_description: &Path,
    item_id_map: &Path,
) -> Result<Dataset> {
    let bytes = read_bytes(sequential_data, "`user_id item_id item_id …` lines")?;
    let mut seqs: Vec<(u64, Vec<u64>)> = Vec::new();
    for (ln, line) in lines(&bytes) {
        let mut it = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let user = match it.next() {
            Some(u) => parse_u64(sequential_data, ln, u, "user id")?,
            None => continue,
        };
        let items = it
            .map(|f| parse_u64(sequential_data, ln, f, "item id"))
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(Error::parse(
                sequential_data,
                ln,
                "expected a user id followed by at least one item id, found only a user id",
            ));
        }
        seqs.push((user, items));
    }
    let n: usize = seqs.iter().map(|s| s.1.len()).sum();
    nonempty_interactions(sequential_data, n, "`user_id item_id …` lines")?;

    let users = NumericIds::new(seqs.iter().map(|s| s.0).collect());
    if users.raw().len() != seqs.len() {
        return Err(Error::parse(
            sequential_data,
            0,
            "a user id occurs on more than one line; expected one line per user",
        ));
    }
    let items = NumericIds::new(seqs.iter().flat_map(|s| s.1.iter().copied()).collect());

    let id_map = read_id_map(item_id_map)?;
    let mut descr = read_descriptions(item_description)?;
    let mut item_text = Vec::with_capacity(items.raw().len());
    for &p5 in items.raw() {
        let plrec = id_map.get(&p5).ok_or_else(|| {
            Error::parse(
                item_id_map,
                0,
                format!("P5 item {p5} occurs in the sequences but has no line here"),
            )
        })?;
        let t = descr.remove(plrec).ok_or_else(|| {
            Error::parse(
                item_description,
                0,
                format!("item_id {plrec} (P5 item {p5}) has no record here"),
            )
        })?;
        item_text.push(t);
    }

    let mut xs = Vec::with_capacity(n);
    for (u, its) in &seqs {
        let Some(user) = users.index(*u) else {
            return Err(Error::Invalid(format!("internal: user {u} missing")));
        };
        for (pos, i) in its.iter().enumerate() {
            let Some(item) = items.index(*i) else {
                return Err(Error::Invalid(format!("internal: item {i} missing")));
            };
            xs.push(Interaction {
                user,
                item,
                rating: None,
                timestamp: Some(pos as i64),
            });
        }
    }
    Dataset::from_source_order(name, users.id_map()?, items.id_map()?, xs, item_text)
}
