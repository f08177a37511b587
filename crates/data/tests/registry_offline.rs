//! Registry behaviour that needs no network: names, unknown names, offline
//! misses, checksum mismatches and the cache lookup.

use std::path::Path;

use llmrec_core::Error;
use llmrec_data::registry::{self, Locations, Source};

fn offline(data: Option<&Path>, cache: Option<&Path>) -> Locations {
    Locations {
        data_dir: data.map(Path::to_owned),
        cache_dir: cache.map(Path::to_owned),
        offline: true,
    }
}

#[test]
fn names_and_descriptions() {
    assert_eq!(
        registry::dataset_names(),
        ["ml-100k", "ml-1m", "ml-1m-sas", "amazon-beauty"]
    );
    for n in registry::dataset_names() {
        let d = registry::describe(n).unwrap();
        assert_eq!(d.name, *n);
        for f in d.files {
            if let Some(h) = f.sha256 {
                assert_eq!(h.len(), 64);
                assert!(
                    h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
            }
            if let Source::Url(u) | Source::ZipMember { url: u, .. } = f.source {
                assert!(u.starts_with("https://"));
            }
        }
    }
}

#[test]
fn unknown_name_lists_known() {
    let e = registry::load_with("ml-10m", &offline(None, None)).unwrap_err();
    match e {
        Error::UnknownDataset { name, known } => {
            assert_eq!(name, "ml-10m");
            assert!(known.contains("ml-1m-sas") && known.contains("amazon-beauty"));
        }
        e => panic!("{e:?}"),
    }
    assert!(registry::load_from_dir("nope", Path::new(".")).is_err());
}

#[test]
fn offline_missing_names_paths_url_and_variable() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let e = registry::load_with("ml-1m-sas", &offline(Some(data.path()), Some(cache.path())))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Missing { .. }), "{e:?}");
    assert!(
        msg.contains(&data.path().join("ml-1m-sas").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(
            &cache
                .path()
                .join("data")
                .join("ml-1m-sas")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    assert!(msg.contains("kang205/SASRec"), "{msg}");
    assert!(msg.contains("LLMREC_DATA_DIR"), "{msg}");
    assert!(msg.contains("sequences.txt"), "{msg}");
}

#[test]
fn derived_file_without_url_is_explained() {
    let data = tempfile::tempdir().unwrap();
    let e = registry::load_with("amazon-beauty", &offline(Some(data.path()), None)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("derived/item_id_map.tsv"), "{msg}");
    assert!(msg.contains("no URL"), "{msg}");

    // Even when downloading is allowed, a missing derived file fails before
    // anything is fetched (no network is touched).
    let cache = tempfile::tempdir().unwrap();
    let loc = Locations {
        data_dir: None,
        cache_dir: Some(cache.path().to_owned()),
        offline: false,
    };
    let e = registry::load_with("amazon-beauty", &loc).unwrap_err();
    assert!(matches!(e, Error::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot be downloaded"), "{e}");
}

#[test]
fn checksum_mismatch_in_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("ml-1m-sas");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sequences.txt"), b"1 1\n1 2\n").unwrap();
    let e = registry::load_with("ml-1m-sas", &offline(Some(data.path()), None)).unwrap_err();
    match e {
        Error::Checksum {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, dir.join("sequences.txt"));
            assert!(expected.starts_with("b725f3ac"));
            assert_ne!(actual, expected);
        }
        e => panic!("{e:?}"),
    }
    // load_from_dir does not check hashes: the small file loads.
    let d = registry::load_from_dir("ml-1m-sas", &dir).unwrap();
    assert_eq!(d.interactions.len(), 2);
    assert_eq!(d.item_text[0].title, "item 1");
}

#[test]
fn ml1m_gz_ratings_in_dir() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, b"1::1::5::10\n").unwrap();
    std::fs::write(dir.join("ratings.dat.gz"), enc.finish().unwrap()).unwrap();
    std::fs::write(dir.join("movies.dat"), b"1::Toy Story (1995)::Animation\n").unwrap();
    let d = registry::load_from_dir("ml-1m", dir).unwrap();
    assert_eq!(d.interactions.len(), 1);
}

#[test]
fn real_data_via_cache_dir() {
    // The cache layout is `<cache>/data/<name>/`; point it at the shared data's parent.
    let Some(data) = llmrec_testkit::data_dir() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let link = cache.path().join("data");
    #[cfg(unix)]
    std::os::unix::fs::symlink(std::fs::canonicalize(&data).unwrap(), &link).unwrap();
    #[cfg(not(unix))]
    {
        let _ = (&link, data);
        return;
    }
    let d = registry::load_with("ml-100k", &offline(None, Some(cache.path()))).unwrap();
    assert_eq!(d.interactions.len(), 100_000);
}
