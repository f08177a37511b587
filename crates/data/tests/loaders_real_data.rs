//! Loaders on the real data in `$LLMREC_DATA_DIR` (or `../shared/data`).

use std::path::PathBuf;
use std::time::Instant;

use llmrec_data::loaders::{self, Column, GenericSpec};
use llmrec_data::registry::{self, Locations};

/// The datasets folder (a missing one fails the test unless
/// `LLMREC_ALLOW_SKIP=1`; see `llmrec-testkit`).
fn data_dir() -> Option<PathBuf> {
    llmrec_testkit::data_dir()
}

/// True when `s` still holds something shaped like `&name;` or `&#123;`.
fn has_entity(s: &str) -> bool {
    s.match_indices('&').any(|(i, _)| {
        let rest = &s[i + 1..];
        let end = rest.find(';').unwrap_or(usize::MAX);
        end > 0
            && end <= 10
            && rest[..end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '#')
    })
}

/// Registry lookup with checksums, never downloading.
fn offline(dir: &std::path::Path) -> Locations {
    Locations {
        data_dir: Some(dir.to_owned()),
        cache_dir: None,
        offline: true,
    }
}

#[test]
fn ml_1m_sas_counts_titles_and_order() {
    let Some(dir) = data_dir() else { return };
    let t = Instant::now();
    let d = registry::load_with("ml-1m-sas", &offline(&dir)).unwrap();
    eprintln!("ml-1m-sas loaded (with sha256 check) in {:?}", t.elapsed());
    assert_eq!(d.name, "ml-1m-sas");
    assert_eq!(d.n_users(), 6_040);
    assert_eq!(d.n_items(), 3_416);
    assert_eq!(d.interactions.len(), 999_611);
    // SAS ids are the raw ids, in order.
    assert_eq!(d.users.raw(0), "1");
    assert_eq!(d.users.raw(6_039), "6040");
    assert_eq!(d.items.raw(0), "1");
    assert_eq!(d.items.raw(3_415), "3416");
    // items.tsv: SAS item 1 is Raiders; Toy Story is found by title.
    assert_eq!(d.item_text[0].title, "Raiders of the Lost Ark (1981)");
    let toy = d
        .item_text
        .iter()
        .find(|t| t.title == "Toy Story (1995)")
        .unwrap();
    assert_eq!(toy.categories, ["Animation", "Children's", "Comedy"]);
    // Non-ASCII titles are UTF-8 in items.tsv.
    assert!(d.item_text.iter().any(|t| t.title.contains("Misérables")));
    // First user's sequence starts with items 1, 2, 3 in file order.
    let seqs = d.sequences();
    assert_eq!(&seqs[0][..3], &[0, 1, 2]);
}

#[test]
fn ml_1m_sas_without_items_tsv_falls_back() {
    let Some(dir) = data_dir() else { return };
    let d = loaders::load_sasrec_from_files(&dir.join("ml-1m-sas/sequences.txt"), None).unwrap();
    assert_eq!(d.n_items(), 3_416);
    assert_eq!(d.item_text[0].title, "item 1");
}

#[test]
fn ml_100k_counts_and_latin1() {
    let Some(dir) = data_dir() else { return };
    let d = registry::load_with("ml-100k", &offline(&dir)).unwrap();
    assert_eq!(d.n_users(), 943);
    assert_eq!(d.n_items(), 1_682);
    assert_eq!(d.interactions.len(), 100_000);
    let i = d.items.get("1633").unwrap() as usize;
    assert_eq!(d.item_text[i].title, "Á köldum klaka (Cold Fever) (1994)");
    let toy = &d.item_text[d.items.get("1").unwrap() as usize];
    assert_eq!(toy.title, "Toy Story (1995)");
    assert_eq!(toy.categories, ["Animation", "Children's", "Comedy"]);
    // Chronological within users.
    for u in d.user_interactions() {
        assert!(u.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    }
    assert!(d.interactions.iter().all(|x| {
        let r = x.rating.unwrap();
        (1.0..=5.0).contains(&r)
    }));
}

#[test]
fn ml_1m_partial_ratings_gz() {
    let Some(dir) = data_dir() else { return };
    let d = loaders::load_ml1m_from_files(
        &dir.join("ml-1m/ratings_users_1-2999.dat.gz"),
        &dir.join("ml-1m/movies.dat"),
    )
    .unwrap();
    assert_eq!(d.interactions.len(), 487_650);
    assert_eq!(d.n_users(), 2_999);
    let toy = &d.item_text[d.items.get("1").unwrap() as usize];
    assert_eq!(toy.title, "Toy Story (1995)");
    assert_eq!(toy.categories, ["Animation", "Children's", "Comedy"]);
    assert!(d.item_text.iter().any(|t| t.title.contains("Misérables")));
}

#[test]
fn ml_1m_registry_without_ratings_is_missing_offline() {
    let Some(dir) = data_dir() else { return };
    // The real ml-1m folder without its ratings file (whether or not the
    // shared copy has one), so that this check always runs.
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("ml-1m")).unwrap();
    for f in ["movies.dat", "users.dat", "README"] {
        let src = dir.join("ml-1m").join(f);
        if src.is_file() {
            std::fs::copy(&src, t.path().join("ml-1m").join(f)).unwrap();
        }
    }
    let e = registry::load_with("ml-1m", &offline(t.path())).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("ratings.dat"), "{msg}");
    assert!(msg.contains("ml-1m.zip"), "{msg}");
    assert!(msg.contains("LLMREC_DATA_DIR"), "{msg}");
}

#[test]
fn amazon_beauty_counts_titles_entities() {
    let Some(dir) = data_dir() else { return };
    let d = registry::load_with("amazon-beauty", &offline(&dir)).unwrap();
    assert_eq!(d.n_users(), 22_363);
    assert_eq!(d.n_items(), 12_101);
    assert_eq!(d.interactions.len(), 198_502);
    assert_eq!(d.items.raw(0), "1");
    assert_eq!(
        d.item_text[0].title,
        "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    );
    // The title with an embedded newline (PLRec item 378) is loaded whole.
    assert!(
        d.item_text
            .iter()
            .any(|t| t.title == "TheraNeem Cream - Original Organix South 2 oz Cream \nVanilla")
    );
    // Entities are decoded everywhere.
    for t in &d.item_text {
        for s in std::iter::once(&t.title)
            .chain(&t.categories)
            .chain(t.brand.as_ref())
        {
            assert!(!has_entity(s), "entity left in {s:?}");
        }
    }
    assert!(d.item_text.iter().any(|t| t.title.contains('®')));
    assert!(
        d.item_text
            .iter()
            .any(|t| t.categories.iter().any(|c| c == "Men's"))
    );
    assert!(
        d.item_text[0]
            .categories
            .first()
            .is_some_and(|c| c == "Beauty")
    );
    assert!(d.item_text.iter().any(|t| t.brand.is_none()));
    // Sequences follow the file: user 1 is `1 1 2 3 4 5`.
    let first: Vec<&str> = d.sequences()[0].iter().map(|&i| d.items.raw(i)).collect();
    assert_eq!(first, ["1", "2", "3", "4", "5"]);
}

#[test]
fn generic_on_ml_1m_fold() {
    let Some(dir) = data_dir() else { return };
    let mut spec = GenericSpec::new(dir.join("ml-1m/ratings_no_timestamp_5fold/test_1m1.dat"));
    spec.rating_col = Some(Column::Index(2));
    let d = loaders::load_generic("ml-1m-fold1", &spec, None).unwrap();
    assert_eq!(d.interactions.len(), 200_042);
    assert_eq!(d.users.raw(0), "1");
    assert_eq!(d.items.raw(0), "938");
    assert_eq!(d.item_text[0].title, "938");
    assert!(d.interactions.iter().all(|x| x.rating.is_some()));
}
