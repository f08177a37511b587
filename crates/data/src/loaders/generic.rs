//! A generic loader for delimited interaction files with optional item text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmrec_core::{Dataset, Error, IdMap, Interaction, ItemText, Result};
use serde::Deserialize;

use super::amazon::csv_error;
use super::nonempty_interactions;
use super::text::{lines, parse_categories, parse_f32, parse_i64, read_bytes, show, utf8};

/// A column of a delimited file: a header name or a 0-based index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// Column with this header name (needs `has_header`).
    Name(String),
    /// 0-based column index.
    Index(usize),
}

impl From<usize> for Column {
    fn from(i: usize) -> Self {
        Column::Index(i)
    }
}

impl From<&str> for Column {
    fn from(s: &str) -> Self {
        Column::Name(s.to_owned())
    }
}

/// How to read an interaction file (plain or gzip).
#[derive(Debug, Clone)]
pub struct GenericSpec {
    /// The interaction file.
    pub path: PathBuf,
    /// Field delimiter; `None`: `.tsv` -> tab, `.csv` -> comma, else sniffed
    /// from the first line (tab, comma, `;`, `|`, then space).
    pub delimiter: Option<u8>,
    /// Whether the first line is a header.
    pub has_header: bool,
    /// User id column.
    pub user_col: Column,
    /// Item id column.
    pub item_col: Column,
    /// Rating column (any finite number), if any.
    pub rating_col: Option<Column>,
    /// Timestamp column (integer, or a number truncated to an integer), if any.
    /// Without it, each user's interactions keep file order.
    pub timestamp_col: Option<Column>,
}

impl GenericSpec {
    /// A spec with user in column 0, item in column 1, no header, no rating or
    /// timestamp, and an automatic delimiter.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GenericSpec {
            path: path.into(),
            delimiter: None,
            has_header: false,
            user_col: Column::Index(0),
            item_col: Column::Index(1),
            rating_col: None,
            timestamp_col: None,
        }
    }
}

/// Item text in a delimited file.
#[derive(Debug, Clone)]
pub struct ItemTextCsv {
    /// The file.
    pub path: PathBuf,
    /// Field delimiter; `None` as in [`GenericSpec::delimiter`].
    pub delimiter: Option<u8>,
    /// Whether the first line is a header.
    pub has_header: bool,
    /// Item id column (same raw ids as the interaction file).
    pub id_col: Column,
    /// Title column.
    pub title_col: Column,
    /// Categories column, if any: `A|B|C` or a Python-style list `'A', 'B'`.
    pub categories_col: Option<Column>,
    /// Brand column, if any (empty -> no brand).
    pub brand_col: Option<Column>,
}

/// Where item text for [`load_generic`] comes from.
#[derive(Debug, Clone)]
pub enum ItemTextSpec {
    /// A delimited file (CSV quoting rules).
    Csv(ItemTextCsv),
    /// A JSON Lines file (plain or gzip), one object per line:
    /// `{"item": "42", "title": "Toy Story (1995)", "categories": ["Animation"], "brand": "Pixar"}`.
    /// `item` (a string or an integer) is required; `title` (string),
    /// `categories` (array of strings) and `brand` (string) are optional; other
    /// keys are ignored.
    Jsonl(PathBuf),
}

fn sniff_delimiter(path: &Path, bytes: &[u8]) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") => return b'\t',
        Some("csv") => return b',',
        _ => {}
    }
    let first = lines(bytes).next().map(|(_, l)| l).unwrap_or(&[]);
    [b'\t', b',', b';', b'|', b' ']
        .into_iter()
        .map(|d| (d, first.iter().filter(|&&b| b == d).count()))
        .filter(|&(_, n)| n > 0)
        .max_by_key(|&(d, n)| (n, d == b'\t'))
        .map(|(d, _)| d)
        .unwrap_or(b',')
}

/// Resolves a column to an index, given the header when there is one.
fn resolve(path: &Path, col: &Column, headers: Option<&csv::ByteRecord>) -> Result<usize> {
    match col {
        Column::Index(i) => Ok(*i),
        Column::Name(name) => {
            let Some(h) = headers else {
                return Err(Error::parse(
                    path,
                    1,
                    format!(
                        "column `{name}` is given by name, but the file has no header (has_header is false)"
                    ),
                ));
            };
            h.iter()
                .position(|f| f.trim_ascii() == name.as_bytes())
                .ok_or_else(|| {
                    Error::parse(
                        path,
                        1,
                        format!(
                            "expected a column named `{name}` in the header, found: {}",
                            h.iter().map(show).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })
        }
    }
}

fn get<'a>(path: &Path, line: usize, rec: &'a csv::ByteRecord, i: usize) -> Result<&'a [u8]> {
    rec.get(i).ok_or_else(|| {
        Error::parse(
            path,
            line,
            format!("expected at least {} fields, found {}", i + 1, rec.len()),
        )
    })
}

fn id_str<'a>(path: &Path, line: usize, field: &'a [u8], what: &str) -> Result<&'a str> {
    let s = utf8(path, line, field)?.trim();
    if s.is_empty() {
        return Err(Error::parse(
            path,
            line,
            format!("expected a {what}, found an empty field"),
        ));
    }
    Ok(s)
}

/// A CSV reader over `bytes` (delimiter given, or sniffed from the file), and
/// the header row when the file has one.
fn open_csv<'a>(
    path: &Path,
    bytes: &'a [u8],
    delimiter: Option<u8>,
    has_header: bool,
) -> Result<(csv::Reader<&'a [u8]>, Option<csv::ByteRecord>)> {
    let delimiter = delimiter.unwrap_or_else(|| sniff_delimiter(path, bytes));
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(has_header)
        .from_reader(bytes);
    let headers = if has_header {
        Some(rdr.byte_headers().map_err(|e| csv_error(path, e))?.clone())
    } else {
        None
    };
    Ok((rdr, headers))
}

/// [`resolve`] for a column that may be absent.
fn resolve_opt(
    path: &Path,
    col: Option<&Column>,
    headers: Option<&csv::ByteRecord>,
) -> Result<Option<usize>> {
    col.map(|c| resolve(path, c, headers)).transpose()
}

fn read_text_csv(spec: &ItemTextCsv) -> Result<HashMap<String, ItemText>> {
    let path = &spec.path;
    let bytes = read_bytes(path, "item text rows")?;
    let (mut rdr, headers) = open_csv(path, &bytes, spec.delimiter, spec.has_header)?;
    let h = headers.as_ref();
    let id_c = resolve(path, &spec.id_col, h)?;
    let title_c = resolve(path, &spec.title_col, h)?;
    let cat_c = resolve_opt(path, spec.categories_col.as_ref(), h)?;
    let brand_c = resolve_opt(path, spec.brand_col.as_ref(), h)?;
    let mut out = HashMap::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, e)),
        }
        let ln = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let id = id_str(path, ln, get(path, ln, &rec, id_c)?, "item id")?.to_owned();
        let title = utf8(path, ln, get(path, ln, &rec, title_c)?)?
            .trim()
            .to_owned();
        let categories = match cat_c {
            Some(c) => parse_categories(utf8(path, ln, get(path, ln, &rec, c)?)?),
            None => Vec::new(),
        };
        let brand = match brand_c {
            Some(c) => Some(utf8(path, ln, get(path, ln, &rec, c)?)?.trim().to_owned())
                .filter(|b| !b.is_empty()),
            None => None,
        };
        out.insert(
            id,
            ItemText {
                title,
                categories,
                brand,
            },
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct JsonItem {
    item: serde_json::Value,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    brand: Option<String>,
}

fn read_text_jsonl(path: &Path) -> Result<HashMap<String, ItemText>> {
    let bytes = read_bytes(path, "JSON Lines `{\"item\": …, \"title\": …}`")?;
    let mut out = HashMap::new();
    for (ln, line) in lines(&bytes) {
        let s = utf8(path, ln, line)?;
        let j: JsonItem = serde_json::from_str(s).map_err(|e| {
            Error::parse(
                path,
                ln,
                format!(
                    "expected a JSON object {{\"item\": …, \"title\": …, \"categories\": […], \"brand\": …}}: {e}"
                ),
            )
        })?;
        let id = match &j.item {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            other => {
                return Err(Error::parse(
                    path,
                    ln,
                    format!("expected `item` to be a string or an integer, found {other}"),
                ));
            }
        };
        out.insert(
            id,
            ItemText {
                title: j.title.unwrap_or_default().trim().to_owned(),
                categories: j.categories,
                brand: j.brand.filter(|b| !b.trim().is_empty()),
            },
        );
    }
    Ok(out)
}

/// Loads a delimited interaction file (plain or gzip) described by `spec`.
///
/// Users and items get dense ids in order of first appearance; raw ids are the
/// field text. Each user's interactions are ordered by timestamp when there is
/// a timestamp column, ties (and files without timestamps) keeping file order.
/// Item text, when given, is joined on the raw item id; items without text
/// get their raw id as title; text rows for unknown items are ignored.
pub fn load_generic(
    name: &str,
    spec: &GenericSpec,
    item_text: Option<&ItemTextSpec>,
) -> Result<Dataset> {
    let path = &spec.path;
    let bytes = read_bytes(path, "delimited user/item rows")?;
    let (mut rdr, headers) = open_csv(path, &bytes, spec.delimiter, spec.has_header)?;
    let h = headers.as_ref();
    let user_c = resolve(path, &spec.user_col, h)?;
    let item_c = resolve(path, &spec.item_col, h)?;
    let rating_c = resolve_opt(path, spec.rating_col.as_ref(), h)?;
    let ts_c = resolve_opt(path, spec.timestamp_col.as_ref(), h)?;

    let mut users = IdMap::new();
    let mut items = IdMap::new();
    let mut xs = Vec::with_capacity(bytes.len() / 16);
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, e)),
        }
        let ln = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.len() == 1 && rec.get(0).is_some_and(|f| f.trim_ascii().is_empty()) {
            continue;
        }
        let user = users.intern(id_str(path, ln, get(path, ln, &rec, user_c)?, "user id")?);
        let item = items.intern(id_str(path, ln, get(path, ln, &rec, item_c)?, "item id")?);
        let rating = match rating_c {
            Some(c) => Some(parse_f32(path, ln, get(path, ln, &rec, c)?, "rating")?),
            None => None,
        };
        let timestamp = match ts_c {
            Some(c) => Some(parse_i64(path, ln, get(path, ln, &rec, c)?, "timestamp")?),
            None => None,
        };
        xs.push(Interaction {
            user,
            item,
            rating,
            timestamp,
        });
    }
    nonempty_interactions(path, xs.len(), "rows with a user and an item")?;

    let mut texts = match item_text {
        Some(ItemTextSpec::Csv(c)) => read_text_csv(c)?,
        Some(ItemTextSpec::Jsonl(p)) => read_text_jsonl(p)?,
        None => HashMap::new(),
    };
    let item_text = items
        .raw_ids()
        .iter()
        .map(|raw| {
            texts.remove(raw).unwrap_or_else(|| ItemText {
                title: raw.clone(),
                ..ItemText::default()
            })
        })
        .collect();
    Dataset::from_source_order(name, users, items, xs, item_text)
}
