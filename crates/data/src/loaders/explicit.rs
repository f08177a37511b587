//! MovieLens 1M with explicit ratings in each user's time order, the user profiles
//! and the movies: what the rating-prediction and CTR methods read
//! (`ml-1m/derived/ratings_ordered.tsv`, `users.dat`, `movies.dat`; see the
//! dataset's `PROVENANCE.md`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use llmrec_core::{Error, Result};

use super::text::{fields, latin1, lines, parse_categories, parse_u64, read_bytes};

/// A user's profile from `users.dat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    /// `M` or `F`.
    pub gender: char,
    /// The age band's code (1, 18, 25, 35, 45, 50, 56).
    pub age: u8,
    /// The occupation's code (0 to 20).
    pub occupation: u8,
}

impl UserProfile {
    /// The age band in words, as the dataset's README names it.
    pub fn age_band(&self) -> &'static str {
        match self.age {
            1 => "under 18",
            18 => "18-24",
            25 => "25-34",
            35 => "35-44",
            45 => "45-49",
            50 => "50-55",
            _ => "56 or older",
        }
    }

    /// The occupation in words, as the dataset's README names it.
    pub fn occupation_name(&self) -> &'static str {
        const NAMES: [&str; 21] = [
            "other",
            "academic/educator",
            "artist",
            "clerical/admin",
            "college/grad student",
            "customer service",
            "doctor/health care",
            "executive/managerial",
            "farmer",
            "homemaker",
            "K-12 student",
            "lawyer",
            "programmer",
            "retired",
            "sales/marketing",
            "scientist",
            "self-employed",
            "technician/engineer",
            "tradesman/craftsman",
            "unemployed",
            "writer",
        ];
        NAMES
            .get(self.occupation as usize)
            .copied()
            .unwrap_or("other")
    }
}

/// A movie from `movies.dat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    /// Title with year, as the file writes it ("Matrix, The (1999)").
    pub title: String,
    /// Genres, in the file's order.
    pub genres: Vec<String>,
}

/// One rating: the MovieLens movie id and the stars (1 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rated {
    /// MovieLens movie id.
    pub movie: u32,
    /// Stars, 1 to 5.
    pub stars: u8,
}

/// Explicit ratings in each user's time order, with profiles and movies.
#[derive(Debug, Clone)]
pub struct ExplicitRatings {
    /// Each user's ratings, oldest first, by MovieLens user id (ascending).
    pub histories: BTreeMap<u32, Vec<Rated>>,
    /// Profiles by MovieLens user id.
    pub users: HashMap<u32, UserProfile>,
    /// Movies by MovieLens movie id.
    pub movies: HashMap<u32, Movie>,
}

impl ExplicitRatings {
    /// Ratings in all.
    pub fn len(&self) -> usize {
        self.histories.values().map(Vec::len).sum()
    }

    /// Whether there are no ratings.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads `ratings_ordered.tsv` (`user_id movie_id rating position`, tab-separated,
/// a header line, sorted by user then position), `users.dat`
/// (`UserID::Gender::Age::Occupation::Zip-code`) and `movies.dat`
/// (`MovieID::Title::Genres`, latin-1). Positions must run 0, 1, 2, ... within each
/// user; every rated movie must be in `movies` and every user in `users`. Any
/// breach is an error naming the file and line.
pub fn load_explicit(ratings: &Path, users: &Path, movies: &Path) -> Result<ExplicitRatings> {
    let movie_map = read_movies(movies)?;
    let user_map = read_users(users)?;
    let bytes = read_bytes(ratings, "`user_id\tmovie_id\trating\tposition` lines")?;
    let mut histories: BTreeMap<u32, Vec<Rated>> = BTreeMap::new();
    let mut last_user: Option<u32> = None;
    for (ln, line) in lines(&bytes) {
        if ln == 1 && line.starts_with(b"user_id") {
            continue;
        }
        let [u, m, r, p] = fields::<4>(line, b"\t").map_err(|n| {
            Error::parse(
                ratings,
                ln,
                format!(
                    "expected 4 tab-separated fields `user_id movie_id rating position`, found {n}"
                ),
            )
        })?;
        let u = parse_u64(ratings, ln, u, "user id")? as u32;
        let m = parse_u64(ratings, ln, m, "movie id")? as u32;
        let r = parse_u64(ratings, ln, r, "rating")?;
        let p = parse_u64(ratings, ln, p, "position")? as usize;
        if !(1..=5).contains(&r) {
            return Err(Error::parse(
                ratings,
                ln,
                format!("rating {r} is not 1 to 5"),
            ));
        }
        if last_user.is_some_and(|l| u < l) {
            return Err(Error::parse(
                ratings,
                ln,
                format!(
                    "user {u} after user {}: the file must be sorted by user",
                    last_user.unwrap_or(0)
                ),
            ));
        }
        last_user = Some(u);
        if !user_map.contains_key(&u) {
            return Err(Error::parse(
                ratings,
                ln,
                format!("user {u} is not in {}", users.display()),
            ));
        }
        if !movie_map.contains_key(&m) {
            return Err(Error::parse(
                ratings,
                ln,
                format!("movie {m} is not in {}", movies.display()),
            ));
        }
        let h = histories.entry(u).or_default();
        if p != h.len() {
            return Err(Error::parse(
                ratings,
                ln,
                format!(
                    "position {p} of user {u}, expected {}: positions run 0, 1, 2, ...",
                    h.len()
                ),
            ));
        }
        h.push(Rated {
            movie: m,
            stars: r as u8,
        });
    }
    if histories.is_empty() {
        return Err(Error::parse(ratings, 0, "no ratings"));
    }
    Ok(ExplicitRatings {
        histories,
        users: user_map,
        movies: movie_map,
    })
}

/// [`load_explicit`] of the MovieLens 1M folder `dir` (as in the shared data:
/// `derived/ratings_ordered.tsv`, `users.dat`, `movies.dat`).
pub fn load_ml1m_explicit(dir: &Path) -> Result<ExplicitRatings> {
    load_explicit(
        &dir.join("derived").join("ratings_ordered.tsv"),
        &dir.join("users.dat"),
        &dir.join("movies.dat"),
    )
}

fn read_users(path: &Path) -> Result<HashMap<u32, UserProfile>> {
    let bytes = read_bytes(path, "`UserID::Gender::Age::Occupation::Zip-code` lines")?;
    let mut out = HashMap::new();
    for (ln, line) in lines(&bytes) {
        let [id, gender, age, occ, _zip] = fields::<5>(line, b"::").map_err(|n| {
            Error::parse(
                path,
                ln,
                format!("expected 5 fields `UserID::Gender::Age::Occupation::Zip-code`, found {n}"),
            )
        })?;
        let id = parse_u64(path, ln, id, "user id")? as u32;
        let gender = match gender.trim_ascii() {
            b"M" => 'M',
            b"F" => 'F',
            g => {
                return Err(Error::parse(
                    path,
                    ln,
                    format!("gender `{}` is not M or F", latin1(g)),
                ));
            }
        };
        let age = parse_u64(path, ln, age, "age")?;
        let occupation = parse_u64(path, ln, occ, "occupation")?;
        if age > 200 || occupation > 20 {
            return Err(Error::parse(
                path,
                ln,
                format!("age {age} or occupation {occupation} out of range"),
            ));
        }
        let profile = UserProfile {
            gender,
            age: age as u8,
            occupation: occupation as u8,
        };
        if out.insert(id, profile).is_some() {
            return Err(Error::parse(path, ln, format!("duplicate user id {id}")));
        }
    }
    Ok(out)
}

/// `movies.dat` (`MovieID::Title::Genres`, latin-1) by movie id.
pub(crate) fn read_movies(path: &Path) -> Result<HashMap<u32, Movie>> {
    let bytes = read_bytes(path, "`MovieID::Title::Genres` lines")?;
    let mut out = HashMap::new();
    for (ln, line) in lines(&bytes) {
        let [id, title, genres] = fields::<3>(line, b"::").map_err(|n| {
            Error::parse(
                path,
                ln,
                format!("expected 3 fields `MovieID::Title::Genres`, found {n}"),
            )
        })?;
        let id = parse_u64(path, ln, id, "movie id")? as u32;
        let movie = Movie {
            title: latin1(title.trim_ascii()),
            genres: parse_categories(&latin1(genres)),
        };
        if out.insert(id, movie).is_some() {
            return Err(Error::parse(path, ln, format!("duplicate movie id {id}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn files(
        dir: &Path,
        ratings: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        (
            write(dir, "r.tsv", ratings),
            write(
                dir,
                "users.dat",
                "1::F::1::10::48067\n2::M::56::16::70072\n",
            ),
            write(
                dir,
                "movies.dat",
                "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Matrix, The (1999)::Action|Sci-Fi\n",
            ),
        )
    }

    #[test]
    fn loads_in_order_with_profiles_and_movies() {
        let d = tempfile::tempdir().unwrap();
        let (r, u, m) = files(
            d.path(),
            "user_id\tmovie_id\trating\tposition\n1\t2\t4\t0\n1\t1\t5\t1\n2\t1\t1\t0\n",
        );
        let e = load_explicit(&r, &u, &m).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e.histories[&1],
            vec![Rated { movie: 2, stars: 4 }, Rated { movie: 1, stars: 5 }]
        );
        assert_eq!(e.users[&2].age_band(), "56 or older");
        assert_eq!(e.users[&1].occupation_name(), "K-12 student");
        assert_eq!(
            e.movies[&1].genres,
            vec!["Animation", "Children's", "Comedy"]
        );
    }

    #[test]
    fn bad_rows_name_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        for (text, want) in [
            (
                "user_id\tmovie_id\trating\tposition\n1\t2\t6\t0\n",
                "r.tsv:2: rating 6",
            ),
            (
                "user_id\tmovie_id\trating\tposition\n1\t2\t4\t1\n",
                "positions run",
            ),
            (
                "user_id\tmovie_id\trating\tposition\n1\t9\t4\t0\n",
                "movie 9",
            ),
            (
                "user_id\tmovie_id\trating\tposition\n3\t1\t4\t0\n",
                "user 3",
            ),
            (
                "user_id\tmovie_id\trating\tposition\n2\t1\t4\t0\n1\t1\t4\t0\n",
                "sorted",
            ),
            (
                "user_id\tmovie_id\trating\tposition\n1\t2\t4\n",
                "4 tab-separated",
            ),
        ] {
            let (r, u, m) = files(d.path(), text);
            let e = load_explicit(&r, &u, &m).unwrap_err().to_string();
            assert!(e.contains("r.tsv") && e.contains(want), "{e}");
        }
    }
}
