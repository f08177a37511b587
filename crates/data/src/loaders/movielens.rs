//! MovieLens 100K (`u.data`, `u.item`, `u.genre`) and 1M (`ratings.dat`, `movies.dat`).

use std::collections::HashMap;
use std::path::Path;

use llmrec_core::{Dataset, Error, Interaction, ItemText, Result};

use super::text::{
    fields, latin1, lines, parse_i64, parse_movielens_rating, parse_u64, read_bytes,
};
use super::{NumericIds, nonempty_interactions};

/// The 19 ML-100K genres in `u.item` flag order (as in `u.genre`).
const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// One raw rating row.
struct Row {
    user: u64,
    item: u64,
    rating: f32,
    ts: i64,
}

/// Builds the dataset: users and items ordered by numeric MovieLens id; only
/// items that have ratings are kept. Every rated item needs a text entry.
fn build(
    name: &str,
    rows: Vec<Row>,
    mut text: HashMap<u64, ItemText>,
    items_path: &Path,
) -> Result<Dataset> {
    let users = NumericIds::new(rows.iter().map(|r| r.user).collect());
    let items = NumericIds::new(rows.iter().map(|r| r.item).collect());
    let mut item_text = Vec::with_capacity(items.raw().len());
    for &raw in items.raw() {
        match text.remove(&raw) {
            Some(t) => item_text.push(t),
            None => {
                return Err(Error::parse(
                    items_path,
                    0,
                    format!("movie {raw} has ratings but no line in this file"),
                ));
            }
        }
    }
    let mut xs = Vec::with_capacity(rows.len());
    for r in &rows {
        // Both lookups succeed: the sets were built from these rows.
        let (Some(user), Some(item)) = (users.index(r.user), items.index(r.item)) else {
            return Err(Error::Invalid(format!(
                "internal: id ({}, {}) missing from id maps",
                r.user, r.item
            )));
        };
        xs.push(Interaction {
            user,
            item,
            rating: Some(r.rating),
            timestamp: Some(r.ts),
        });
    }
    Dataset::from_source_order(name, users.id_map()?, items.id_map()?, xs, item_text)
}

/// Reads `user<sep>item<sep>rating<sep>timestamp` lines.
fn read_ratings(path: &Path, sep: &[u8], format: &str) -> Result<Vec<Row>> {
    let bytes = read_bytes(path, &format!("rating lines `{format}`"))?;
    let mut rows = Vec::with_capacity(bytes.len() / 20);
    for (ln, line) in lines(&bytes) {
        let [u, i, r, t] = fields::<4>(line, sep).map_err(|n| {
            Error::parse(path, ln, format!("expected 4 fields `{format}`, found {n}"))
        })?;
        rows.push(Row {
            user: parse_u64(path, ln, u, "user id")?,
            item: parse_u64(path, ln, i, "movie id")?,
            rating: parse_movielens_rating(path, ln, r)?,
            ts: parse_i64(path, ln, t, "timestamp (Unix seconds)")?,
        });
    }
    nonempty_interactions(path, rows.len(), &format!("lines `{format}`"))?;
    Ok(rows)
}

/// Reads `u.genre` (`name|index` lines); `None` if the file is absent.
fn read_genres(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_bytes(path, "`genre|index` lines")?;
    let mut genres: Vec<(u64, String)> = Vec::new();
    for (ln, line) in lines(&bytes) {
        let [g, i] = fields::<2>(line, b"|").map_err(|n| {
            Error::parse(
                path,
                ln,
                format!("expected 2 fields `genre|index`, found {n}"),
            )
        })?;
        genres.push((parse_u64(path, ln, i, "genre index")?, latin1(g)));
    }
    genres.sort_by_key(|g| g.0);
    if genres.iter().enumerate().any(|(k, g)| g.0 != k as u64) {
        return Err(Error::parse(
            path,
            0,
            "expected genre indices 0, 1, 2, … without gaps",
        ));
    }
    Ok(Some(genres.into_iter().map(|g| g.1).collect()))
}

/// Loads MovieLens 100K from `u.data` (tab-separated
/// `user item rating timestamp`) and `u.item` (`|`-separated, latin-1:
/// `id|title|release date|video release date|IMDb URL|` and one 0/1 flag per
/// genre). Genre names come from `u_genre` when given and present, else from
/// the fixed ML-100K list; the `unknown` genre is not listed as a category.
/// Users and items are ordered by MovieLens id; raw ids are the MovieLens ids.
pub fn load_ml100k_from_files(
    u_data: &Path,
    u_item: &Path,
    u_genre: Option<&Path>,
) -> Result<Dataset> {
    let genres: Vec<String> = match u_genre {
        Some(p) => read_genres(p)?,
        None => None,
    }
    .unwrap_or_else(|| ML100K_GENRES.iter().map(|g| (*g).to_owned()).collect());
    let rows = read_ratings(u_data, b"\t", "user\\titem\\trating\\ttimestamp")?;
    let bytes = read_bytes(u_item, "`id|title|…|genre flags` lines")?;
    let n_fields = 5 + genres.len();
    let mut text = HashMap::new();
    for (ln, line) in lines(&bytes) {
        let parts: Vec<&[u8]> = line.split(|&b| b == b'|').collect();
        if parts.len() != n_fields {
            return Err(Error::parse(
                u_item,
                ln,
                format!(
                    "expected {n_fields} `|`-separated fields (id|title|release date|video release date|IMDb URL|{} genre flags), found {}",
                    genres.len(),
                    parts.len()
                ),
            ));
        }
        let id = parse_u64(u_item, ln, parts[0], "movie id")?;
        let mut categories = Vec::new();
        for (k, flag) in parts[5..].iter().enumerate() {
            match flag.trim_ascii() {
                b"1" => {
                    if genres[k] != "unknown" {
                        categories.push(genres[k].clone());
                    }
                }
                b"0" => {}
                other => {
                    return Err(Error::parse(
                        u_item,
                        ln,
                        format!(
                            "expected genre flag 0 or 1 in field {}, found `{}`",
                            k + 6,
                            super::text::show(other)
                        ),
                    ));
                }
            }
        }
        let t = ItemText {
            title: latin1(parts[1].trim_ascii()),
            categories,
            brand: None,
        };
        if text.insert(id, t).is_some() {
            return Err(Error::parse(u_item, ln, format!("duplicate movie id {id}")));
        }
    }
    build("ml-100k", rows, text, u_item)
}

/// Loads MovieLens 1M from `ratings` (`UserID::MovieID::Rating::Timestamp`,
/// plain or gzip) and `movies` (`MovieID::Title::Genres`, latin-1, genres
/// `|`-separated). Users and items (only rated movies) are ordered by
/// MovieLens id; raw ids are the MovieLens ids.
pub fn load_ml1m_from_files(ratings: &Path, movies: &Path) -> Result<Dataset> {
    let rows = read_ratings(ratings, b"::", "UserID::MovieID::Rating::Timestamp")?;
    let text: HashMap<u64, ItemText> = super::explicit::read_movies(movies)?
        .into_iter()
        .map(|(id, m)| {
            let t = ItemText {
                title: m.title,
                categories: m.genres,
                brand: None,
            };
            (u64::from(id), t)
        })
        .collect();
    build("ml-1m", rows, text, movies)
}
