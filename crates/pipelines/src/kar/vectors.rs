//! Knowledge vectors: the MiniLM embeddings of the LLM's answers (a user's text is
//! the prompt's context, then the answer; an item's is the answer), and the
//! controls without the LLM: an item's own title and genres, a user's prompt-only
//! ratings as the rating-weighted mean of those movies' text vectors, and shuffled
//! knowledge (every vector moved to another user or item). Encoded texts are kept
//! as embedding artifacts next to the knowledge, so they are computed once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::{Movie, Rated};
use llmrec_llm::{Embedder, encode_cached};
use serde::{Deserialize, Serialize};

use super::knowledge::{KnowledgeRecord, read_records};
use super::prompts::normalise_title;

/// What the CTR model gets besides its own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Knowledge {
    /// Nothing.
    None,
    /// The LLM's reasoning about the user.
    User,
    /// The LLM's facts about the item.
    Item,
    /// Both.
    Both,
    /// Both, each vector moved to another user or item (a control: a real lift
    /// must vanish).
    Shuffled,
    /// The item's title and genres, encoded the same way, without the LLM.
    ItemText,
    /// The user's prompt-only ratings without the LLM: the rating-weighted mean of
    /// those movies' title-and-genre vectors.
    UserHistory,
}

impl Knowledge {
    /// Every kind, in table order.
    pub const ALL: [Knowledge; 7] = [
        Knowledge::None,
        Knowledge::User,
        Knowledge::Item,
        Knowledge::Both,
        Knowledge::Shuffled,
        Knowledge::ItemText,
        Knowledge::UserHistory,
    ];

    /// Its name in configs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Knowledge::None => "none",
            Knowledge::User => "user",
            Knowledge::Item => "item",
            Knowledge::Both => "both",
            Knowledge::Shuffled => "shuffled",
            Knowledge::ItemText => "item-text",
            Knowledge::UserHistory => "user-history",
        }
    }

    /// Whether it needs the LLM's knowledge artifact.
    pub fn needs_llm(&self) -> bool {
        matches!(
            self,
            Knowledge::User | Knowledge::Item | Knowledge::Both | Knowledge::Shuffled
        )
    }
}

/// Whose vector a tower reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Looked up by the sample's user.
    User,
    /// Looked up by the sample's target movie.
    Item,
}

/// One tower's vectors.
pub struct Tower {
    /// Whose vectors.
    pub side: Side,
    /// By MovieLens user or movie id.
    pub vectors: HashMap<u32, Vec<f32>>,
}

/// Vectors by MovieLens user or movie id.
pub type VectorMap = HashMap<u32, Vec<f32>>;

/// The LLM knowledge of `dir` (an artifact of `generate`) as vectors: users, then
/// items.
pub fn llm_vectors(
    embedder: &Embedder,
    dir: &Path,
    progress: &dyn Fn(usize, usize),
) -> Result<(VectorMap, VectorMap)> {
    let encode = |file: &str, cache: &str, text: &dyn Fn(&KnowledgeRecord) -> String| {
        let recs = read_records(&dir.join(file))?;
        let texts: Vec<String> = recs.iter().map(text).collect();
        let vecs = encode_cached(embedder, &texts, &dir.join(cache), progress)?;
        Ok::<_, Error>(
            recs.iter()
                .map(|r| r.id)
                .zip(vecs)
                .collect::<HashMap<_, _>>(),
        )
    };
    let users = encode("users.jsonl", "users.minilm.emb", &|r| {
        format!("{}\n{}", r.context, r.text)
    })?;
    let items = encode("items.jsonl", "items.minilm.emb", &|r| r.text.clone())?;
    Ok((users, items))
}

/// Each movie's own text, without the LLM: "Title (Year). Genres: A, B".
pub fn item_text(movie: &Movie) -> String {
    format!(
        "{}. Genres: {}",
        normalise_title(&movie.title),
        movie.genres.join(", ")
    )
}

/// Every movie's own text encoded (cached at `path`).
pub fn item_text_vectors(
    embedder: &Embedder,
    movies: &HashMap<u32, Movie>,
    path: &Path,
    progress: &dyn Fn(usize, usize),
) -> Result<HashMap<u32, Vec<f32>>> {
    let mut ids: Vec<u32> = movies.keys().copied().collect();
    ids.sort_unstable();
    let texts: Vec<String> = ids.iter().map(|m| item_text(&movies[m])).collect();
    let vecs = encode_cached(embedder, &texts, path, progress)?;
    Ok(ids.into_iter().zip(vecs).collect())
}

/// Each user's prompt-only ratings as the stars-weighted mean of the rated movies'
/// vectors (movies without one are skipped; a user with none gets no vector).
pub fn user_history_vectors(
    prompt: &BTreeMap<u32, Vec<Rated>>,
    items: &HashMap<u32, Vec<f32>>,
) -> HashMap<u32, Vec<f32>> {
    let mut out = HashMap::new();
    for (&u, hist) in prompt {
        let mut acc: Option<Vec<f32>> = None;
        let mut weight = 0.0f32;
        for r in hist {
            let Some(v) = items.get(&r.movie) else {
                continue;
            };
            let w = r.stars as f32;
            let a = acc.get_or_insert_with(|| vec![0.0; v.len()]);
            for (x, y) in a.iter_mut().zip(v) {
                *x += w * y;
            }
            weight += w;
        }
        if let Some(mut a) = acc {
            a.iter_mut().for_each(|x| *x /= weight);
            out.insert(u, a);
        }
    }
    out
}

/// The same vectors, each moved to another key: keys in a seeded random cycle,
/// every key taking the next one's vector (no key keeps its own).
pub fn shuffled(vectors: &HashMap<u32, Vec<f32>>, seed: u64) -> HashMap<u32, Vec<f32>> {
    let mut keys: Vec<u32> = vectors.keys().copied().collect();
    keys.sort_unstable();
    Rng::new(seed).shuffle(&mut keys);
    let n = keys.len();
    (0..n)
        .map(|i| (keys[i], vectors[&keys[(i + 1) % n]].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_vectors_weight_by_stars() {
        let items = HashMap::from([(1, vec![1.0, 0.0]), (2, vec![0.0, 1.0])]);
        let prompt = BTreeMap::from([
            (
                7,
                vec![
                    Rated { movie: 1, stars: 3 },
                    Rated { movie: 2, stars: 1 },
                    Rated { movie: 9, stars: 5 },
                ],
            ),
            (8, vec![Rated { movie: 9, stars: 5 }]),
        ]);
        let v = user_history_vectors(&prompt, &items);
        assert_eq!(v[&7], vec![0.75, 0.25]);
        assert!(!v.contains_key(&8));
    }

    #[test]
    fn shuffling_moves_every_vector() {
        let v: HashMap<u32, Vec<f32>> = (0..50).map(|i| (i, vec![i as f32])).collect();
        let s = shuffled(&v, 3);
        assert_eq!(s.len(), 50);
        assert!(s.iter().all(|(k, x)| x[0] != *k as f32));
        let mut values: Vec<i32> = s.values().map(|x| x[0] as i32).collect();
        values.sort_unstable();
        assert_eq!(values, (0..50).collect::<Vec<_>>());
    }
}
