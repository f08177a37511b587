//! The dataset registry: names, files, checksums and sources.
//!
//! [`load`] looks for a dataset's files in `$LLMREC_DATA_DIR/<name>/`, then in
//! the cache (`$LLMREC_CACHE_DIR`, else `$HOME/.cache/llmrec`) under
//! `data/<name>/`, and otherwise downloads them from the official source into
//! the cache. Every registered file with a known sha256 is checked on every
//! load (a mismatch is [`Error::Checksum`]). `LLMREC_OFFLINE=1` turns
//! downloading off: a missing dataset is then an [`Error::Missing`] at once.

use std::path::{Path, PathBuf};

use llmrec_core::{Dataset, Error, Result};

use crate::download;
use crate::loaders;

/// Where a registered file can be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A direct URL of the file.
    Url(&'static str),
    /// A member of a zip archive at a URL.
    ZipMember {
        /// The archive.
        url: &'static str,
        /// Path of the member inside the archive.
        member: &'static str,
    },
    /// Not downloadable; the text says why and where to get it.
    NotDownloadable(&'static str),
}

/// One file of a registered dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisteredFile {
    /// Path relative to the dataset's folder.
    pub path: &'static str,
    /// Lower-case hex sha256, where known.
    pub sha256: Option<&'static str>,
    /// Expected line count, checked after a download when no sha256 is known.
    pub lines: Option<usize>,
    /// Where to fetch it.
    pub source: Source,
    /// Whether loading needs it (optional files are used when present).
    pub required: bool,
}

/// A registered dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Registry name.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Its files.
    pub files: &'static [RegisteredFile],
}

const ML100K_ZIP: &str = "https://files.grouplens.org/datasets/movielens/ml-100k.zip";
const ML1M_ZIP: &str = "https://files.grouplens.org/datasets/movielens/ml-1m.zip";
const SAS_URL: &str = "https://raw.githubusercontent.com/kang205/SASRec/e3738967fddab206d6eeb4fda433e7a7034dd8b1/data/ml-1m.txt";
const PLREC_URL: &str = "https://raw.githubusercontent.com/ngoctuannguyen/PLRec/6f76962c7fe1cb4b9299833d7b58b1061c7ff677/data/beauty/item_description.csv";

/// Members that ml-1m.zip must contain. The sha256 of `ratings.dat` is not
/// known to us (no full copy was available when the registry was written), so
/// a downloaded ml-1m.zip is accepted when it has exactly these members, its
/// `movies.dat` and `users.dat` match their registered hashes and `ratings.dat`
/// has the documented 1,000,209 lines.
const ML1M_MEMBERS: [&str; 5] = [
    "ml-1m/",
    "ml-1m/movies.dat",
    "ml-1m/ratings.dat",
    "ml-1m/README",
    "ml-1m/users.dat",
];

const REGISTRY: &[DatasetInfo] = &[
    DatasetInfo {
        name: "ml-100k",
        description: "MovieLens 100K: 100,000 ratings (1-5) by 943 users on 1,682 movies, with timestamps",
        files: &[
            RegisteredFile {
                path: "u.data",
                sha256: Some("06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
                lines: Some(100_000),
                source: Source::ZipMember {
                    url: ML100K_ZIP,
                    member: "ml-100k/u.data",
                },
                required: true,
            },
            RegisteredFile {
                path: "u.item",
                sha256: Some("553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
                lines: Some(1_682),
                source: Source::ZipMember {
                    url: ML100K_ZIP,
                    member: "ml-100k/u.item",
                },
                required: true,
            },
            RegisteredFile {
                path: "u.genre",
                sha256: Some("9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"),
                lines: None,
                source: Source::ZipMember {
                    url: ML100K_ZIP,
                    member: "ml-100k/u.genre",
                },
                required: false,
            },
        ],
    },
    DatasetInfo {
        name: "ml-1m",
        description: "MovieLens 1M: 1,000,209 ratings (1-5) by 6,040 users on 3,706 movies, with timestamps",
        files: &[
            RegisteredFile {
                path: "ratings.dat",
                // Unknown: see ML1M_MEMBERS. `ratings.dat.gz` is accepted locally too.
                sha256: None,
                lines: Some(1_000_209),
                source: Source::ZipMember {
                    url: ML1M_ZIP,
                    member: "ml-1m/ratings.dat",
                },
                required: true,
            },
            RegisteredFile {
                path: "movies.dat",
                sha256: Some("0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"),
                lines: Some(3_883),
                source: Source::ZipMember {
                    url: ML1M_ZIP,
                    member: "ml-1m/movies.dat",
                },
                required: true,
            },
            RegisteredFile {
                path: "users.dat",
                sha256: Some("1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"),
                lines: Some(6_040),
                source: Source::ZipMember {
                    url: ML1M_ZIP,
                    member: "ml-1m/users.dat",
                },
                required: false,
            },
        ],
    },
    DatasetInfo {
        name: "ml-1m-sas",
        description: "ML-1M as preprocessed by SASRec (ml-1m.txt): 6,040 users, 3,416 items, 999,611 interactions, no ratings",
        files: &[
            RegisteredFile {
                path: "sequences.txt",
                sha256: Some("b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2"),
                lines: Some(999_611),
                source: Source::Url(SAS_URL),
                required: true,
            },
            RegisteredFile {
                path: "items.tsv",
                sha256: Some("d4393badc83ecb67abf16fbeeebd055de755343642284259f7ac15d1e2042172"),
                lines: Some(3_417),
                source: Source::NotDownloadable(
                    "items.tsv (SAS item id -> MovieLens title and genres) was derived for this project \
                     from ml-1m/movies.dat and asash/ml1m-sas-mapping; without it titles are `item <id>`",
                ),
                required: false,
            },
        ],
    },
    DatasetInfo {
        name: "amazon-beauty",
        description: "Amazon Beauty 5-core in the P5 preprocessing: 22,363 users, 12,101 items, 198,502 interactions, with titles",
        files: &[
            RegisteredFile {
                path: "p5/sequential_data.txt",
                sha256: Some("f85a84ab47d70e82bf0e7301804270af10fb51e127ab8f0885697d593f6f6d43"),
                lines: Some(22_363),
                source: Source::Url(
                    "https://raw.githubusercontent.com/Wenyueh/LLM-RecSys-ID/2200ad9fef647ef755c01d6d7e5c5de3082606c5/data/beauty/sequential_data.txt",
                ),
                required: true,
            },
            RegisteredFile {
                path: "plrec/item_description.csv",
                sha256: Some("ee1ef3503edd364b6251c9fd52e68dbc0a44ec61a18c609207eaaae762fb1a16"),
                lines: Some(12_103),
                source: Source::Url(PLREC_URL),
                required: true,
            },
            RegisteredFile {
                path: "derived/item_id_map.tsv",
                sha256: Some("bb86e8e88d118cb78f16def4ba6a86e66c569b2d04d94b83f2091c0421afcf75"),
                lines: Some(12_102),
                source: Source::NotDownloadable(
                    "derived/item_id_map.tsv (P5 item id -> ASIN -> PLRec item id) was derived for this \
                     project (see amazon-beauty/PROVENANCE.md) and has no public URL; copy it from the \
                     project's shared data folder",
                ),
                required: true,
            },
        ],
    },
];

/// Names of all registered datasets.
pub fn dataset_names() -> &'static [&'static str] {
    &["ml-100k", "ml-1m", "ml-1m-sas", "amazon-beauty"]
}

/// The registry entry of `name`, or [`Error::UnknownDataset`].
pub fn describe(name: &str) -> Result<&'static DatasetInfo> {
    REGISTRY
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::UnknownDataset {
            name: name.to_owned(),
            known: dataset_names().join(", "),
        })
}

/// Where [`load_with`] looks for and stores datasets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations {
    /// Folder holding `<name>/…` as in the project's shared data (`LLMREC_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    /// Cache root; datasets live in `<cache_dir>/data/<name>/` (`LLMREC_CACHE_DIR`
    /// or `$HOME/.cache/llmrec`).
    pub cache_dir: Option<PathBuf>,
    /// Never download (`LLMREC_OFFLINE` set to anything but empty or `0`).
    pub offline: bool,
}

impl Locations {
    /// Reads `LLMREC_DATA_DIR`, `LLMREC_CACHE_DIR` (else `$HOME/.cache/llmrec`)
    /// and `LLMREC_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Locations {
            data_dir: var("LLMREC_DATA_DIR").map(PathBuf::from),
            cache_dir: var("LLMREC_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("llmrec"))),
            offline: var("LLMREC_OFFLINE").is_some_and(|v| v != "0"),
        }
    }

    fn dataset_cache(&self, name: &str) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|c| c.join("data").join(name))
    }

    fn candidates(&self, name: &str) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(d) = &self.data_dir {
            v.push(d.join(name));
        }
        if let Some(c) = self.dataset_cache(name) {
            v.push(c);
        }
        v
    }
}

/// Loads a registered dataset, locating (and if needed downloading) its files
/// as described in the [module docs](self), using the environment.
pub fn load(name: &str) -> Result<Dataset> {
    load_with(name, &Locations::from_env())
}

/// Like [`load`] with explicit locations instead of the environment.
pub fn load_with(name: &str, loc: &Locations) -> Result<Dataset> {
    let dir = locate(name, loc)?;
    load_from_dir(name, &dir)
}

/// The local path of registered file `f` in `dir`, if present. A file
/// without a known hash may also be present gzip-compressed as `<path>.gz`.
fn present(dir: &Path, f: &RegisteredFile) -> Option<PathBuf> {
    let p = dir.join(f.path);
    if p.is_file() {
        return Some(p);
    }
    if f.sha256.is_none() {
        let gz = dir.join(format!("{}.gz", f.path));
        if gz.is_file() {
            return Some(gz);
        }
    }
    None
}

/// Checks the sha256 of every present registered file in `dir`.
fn verify_dir(dir: &Path, info: &DatasetInfo) -> Result<()> {
    for f in info.files {
        if let (Some(want), Some(p)) = (f.sha256, present(dir, f)) {
            let got = download::sha256_file(&p)?;
            if got != want {
                return Err(Error::Checksum {
                    path: p,
                    expected: want.to_owned(),
                    actual: got,
                });
            }
        }
    }
    Ok(())
}

fn complete(dir: &Path, info: &DatasetInfo) -> bool {
    info.files
        .iter()
        .filter(|f| f.required)
        .all(|f| present(dir, f).is_some())
}

fn source_text(f: &RegisteredFile) -> String {
    match f.source {
        Source::Url(u) => u.to_owned(),
        Source::ZipMember { url, member } => format!("{url} (member {member})"),
        Source::NotDownloadable(why) => format!("no URL: {why}"),
    }
}

fn missing_error(name: &str, loc: &Locations, info: &DatasetInfo, why: &str) -> Error {
    let dirs = loc.candidates(name);
    let missing: Vec<&RegisteredFile> = info
        .files
        .iter()
        .filter(|f| f.required && dirs.iter().all(|d| present(d, f).is_none()))
        .collect();
    let looked_in = if dirs.is_empty() {
        "nowhere (LLMREC_DATA_DIR, LLMREC_CACHE_DIR and HOME are all unset)".to_owned()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sources: Vec<String> = missing
        .iter()
        .map(|f| format!("{}: {}", f.path, source_text(f)))
        .collect();
    Error::Missing {
        what: format!(
            "dataset `{name}` (file(s) {})",
            missing
                .iter()
                .map(|f| f.path)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        looked_in,
        hint: format!(
            "{why} Set LLMREC_DATA_DIR to a folder holding `{name}/` with these files, or fetch them into the cache. Sources: {}",
            sources.join("; ")
        ),
    }
}

/// Finds (or downloads) the folder holding `name`'s files, all checked.
pub fn locate(name: &str, loc: &Locations) -> Result<PathBuf> {
    let info = describe(name)?;
    for dir in loc.candidates(name) {
        if complete(&dir, info) {
            verify_dir(&dir, info)?;
            return Ok(dir);
        }
    }
    if loc.offline {
        return Err(missing_error(
            name,
            loc,
            info,
            "Offline (LLMREC_OFFLINE is set), so nothing was downloaded.",
        ));
    }
    if !cfg!(feature = "download") {
        return Err(missing_error(
            name,
            loc,
            info,
            "This build has no `download` feature, so nothing was downloaded.",
        ));
    }
    let Some(cache) = loc.dataset_cache(name) else {
        return Err(missing_error(
            name,
            loc,
            info,
            "No cache folder (set LLMREC_CACHE_DIR or HOME) to download into.",
        ));
    };
    if let Some(f) = info.files.iter().find(|f| {
        f.required && matches!(f.source, Source::NotDownloadable(_)) && present(&cache, f).is_none()
    }) {
        let why = match f.source {
            Source::NotDownloadable(w) => w,
            _ => "",
        };
        return Err(missing_error(
            name,
            loc,
            info,
            &format!("`{}` cannot be downloaded: {why}.", f.path),
        ));
    }
    fetch_into(&cache, info).map_err(|e| match e {
        Error::Network(m) => missing_error(name, loc, info, &format!("Download failed: {m}.")),
        other => other,
    })?;
    verify_dir(&cache, info)?;
    if !complete(&cache, info) {
        return Err(missing_error(
            name,
            loc,
            info,
            "The download left files missing.",
        ));
    }
    Ok(cache)
}

/// Downloads every missing downloadable file of `info` into `dir`.
fn fetch_into(dir: &Path, info: &DatasetInfo) -> Result<()> {
    let make_parent = |p: &Path| -> Result<()> {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(())
    };
    let mut zip_urls: Vec<&str> = Vec::new();
    for f in info.files {
        if present(dir, f).is_some() {
            continue;
        }
        let dest = dir.join(f.path);
        match f.source {
            Source::Url(url) => {
                make_parent(&dest)?;
                let part = download::part_path(&dest);
                let got = download::fetch(url, &part)?;
                download::finish(&part, &dest, got, f.sha256, f.lines)?;
            }
            Source::ZipMember { url, .. } => {
                if !zip_urls.contains(&url) {
                    zip_urls.push(url);
                }
            }
            Source::NotDownloadable(_) => {}
        }
    }
    for url in zip_urls {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let zip_name = url.rsplit('/').next().unwrap_or("archive.zip");
        let zip_path = download::part_path(&dir.join(zip_name));
        let result = fetch_zip_members(dir, info, url, &zip_path);
        let _ = std::fs::remove_file(&zip_path);
        result?;
    }
    Ok(())
}

fn fetch_zip_members(dir: &Path, info: &DatasetInfo, url: &str, zip_path: &Path) -> Result<()> {
    download::fetch(url, zip_path)?;
    if url == ML1M_ZIP {
        let mut members = download::zip_members(zip_path)?;
        members.sort();
        let mut want: Vec<&str> = ML1M_MEMBERS.to_vec();
        want.sort_unstable();
        if members != want {
            return Err(Error::Invalid(format!(
                "{url}: unexpected zip members {members:?}; expected {want:?}"
            )));
        }
    }
    for f in info.files {
        let Source::ZipMember { url: u, member } = f.source else {
            continue;
        };
        if u != url || present(dir, f).is_some() {
            continue;
        }
        let dest = dir.join(f.path);
        let part = download::part_path(&dest);
        let got = download::extract(zip_path, member, &part)?;
        download::finish(&part, &dest, got, f.sha256, f.lines)?;
    }
    Ok(())
}

/// Loads dataset `name` from the files in `dir` (the dataset's own folder,
/// e.g. `/work/shared/data/ml-1m-sas`), in the registry layout. No checksums
/// are checked here; [`load`] checks them. For `ml-1m`, `ratings.dat` may be
/// gzip-compressed as `ratings.dat.gz`.
pub fn load_from_dir(name: &str, dir: &Path) -> Result<Dataset> {
    let info = describe(name)?;
    let path_of = |rel: &str| -> Result<PathBuf> {
        let f = info.files.iter().find(|f| f.path == rel);
        match f.and_then(|f| present(dir, f)) {
            Some(p) => Ok(p),
            None => Err(Error::Missing {
                what: format!("`{rel}` of dataset `{name}`"),
                looked_in: dir.display().to_string(),
                hint: format!(
                    "source: {}",
                    f.map(source_text).unwrap_or_else(|| "unknown".into())
                ),
            }),
        }
    };
    match name {
        "ml-100k" => {
            let genre = dir.join("u.genre");
            loaders::load_ml100k_from_files(
                &path_of("u.data")?,
                &path_of("u.item")?,
                Some(genre.as_path()),
            )
        }
        "ml-1m" => loaders::load_ml1m_from_files(&path_of("ratings.dat")?, &path_of("movies.dat")?),
        "ml-1m-sas" => {
            let items = dir.join("items.tsv");
            loaders::load_sasrec_from_files(&path_of("sequences.txt")?, Some(items.as_path()))
        }
        "amazon-beauty" => loaders::load_amazon_p5(
            name,
            &path_of("p5/sequential_data.txt")?,
            &path_of("plrec/item_description.csv")?,
            &path_of("derived/item_id_map.tsv")?,
        ),
        _ => Err(Error::UnknownDataset {
            name: name.to_owned(),
            known: dataset_names().join(", "),
        }),
    }
}
