//! Bad input gives `Error::Parse` with file, line and expectation, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use llmrec_core::Error;
use llmrec_data::loaders;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const MOVIES: &[u8] =
    b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n";

fn parse_err(e: Error) -> (PathBuf, usize, String) {
    match e {
        Error::Parse {
            path,
            line,
            message,
        } => (path, line, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn good_ml1m_small() {
    let t = tempfile::tempdir().unwrap();
    let r = write(
        t.path(),
        "ratings.dat",
        b"2::1::5::20\n1::2::3::10\n1::1::4::10\n",
    );
    let m = write(t.path(), "movies.dat", MOVIES);
    let d = loaders::load_ml1m_from_files(&r, &m).unwrap();
    assert_eq!(d.n_users(), 2);
    // Tie at t=10 keeps file order: item 2 then item 1 (not id order).
    let s: Vec<&str> = d.sequences()[0].iter().map(|&i| d.items.raw(i)).collect();
    assert_eq!(s, ["2", "1"]);
}

#[test]
fn wrong_field_count() {
    let t = tempfile::tempdir().unwrap();
    let r = write(t.path(), "ratings.dat", b"1::1::5::978300760\n1::2::3\n");
    let m = write(t.path(), "movies.dat", MOVIES);
    let (path, line, msg) = parse_err(loaders::load_ml1m_from_files(&r, &m).unwrap_err());
    assert_eq!(path, r);
    assert_eq!(line, 2);
    assert!(msg.contains("expected 4 fields"), "{msg}");
    assert!(msg.contains("found 3"), "{msg}");
}

#[test]
fn non_numeric_id() {
    let t = tempfile::tempdir().unwrap();
    let r = write(
        t.path(),
        "u.data",
        b"1\t1\t5\t881250949\nabc\t2\t3\t881250950\n",
    );
    let i = write(
        t.path(),
        "u.item",
        b"1|A (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    );
    let (path, line, msg) = parse_err(loaders::load_ml100k_from_files(&r, &i, None).unwrap_err());
    assert_eq!(path, r);
    assert_eq!(line, 2);
    assert!(msg.contains("user id"), "{msg}");
    assert!(msg.contains("`abc`"), "{msg}");

    let s = write(t.path(), "sequences.txt", b"1 1\n1 x2\n");
    let (path, line, msg) = parse_err(loaders::load_sasrec_from_files(&s, None).unwrap_err());
    assert_eq!((path, line), (s, 2));
    assert!(msg.contains("item id"), "{msg}");
}

#[test]
fn rating_out_of_range() {
    let t = tempfile::tempdir().unwrap();
    let r = write(
        t.path(),
        "ratings.dat",
        b"1::1::5::978300760\n1::2::6::978300761\n",
    );
    let m = write(t.path(), "movies.dat", MOVIES);
    let (_, line, msg) = parse_err(loaders::load_ml1m_from_files(&r, &m).unwrap_err());
    assert_eq!(line, 2);
    assert!(msg.contains("out of range"), "{msg}");
    assert!(msg.contains("1..=5"), "{msg}");

    let r0 = write(t.path(), "r0.dat", b"1::1::0::978300760\n");
    let (_, line, msg) = parse_err(loaders::load_ml1m_from_files(&r0, &m).unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("1..=5"), "{msg}");
    let rf = write(t.path(), "rf.dat", b"1::1::4.5::978300760\n");
    let (_, _, msg) = parse_err(loaders::load_ml1m_from_files(&rf, &m).unwrap_err());
    assert!(msg.contains("1..=5"), "{msg}");
}

#[test]
fn non_utf8_in_items_tsv() {
    let t = tempfile::tempdir().unwrap();
    let s = write(t.path(), "sequences.txt", b"1 1\n1 2\n");
    let i = write(
        t.path(),
        "items.tsv",
        b"sas_item_id\tmovielens_movie_id\ttitle\tgenres\n1\t1\tToy Story (1995)\tAnimation\n2\t2\tMis\xe9rables (1995)\tDrama\n",
    );
    let (path, line, msg) = parse_err(loaders::load_sasrec_from_files(&s, Some(&i)).unwrap_err());
    assert_eq!(path, i);
    assert_eq!(line, 3);
    assert!(msg.contains("expected UTF-8"), "{msg}");
}

#[test]
fn empty_files() {
    let t = tempfile::tempdir().unwrap();
    let e = write(t.path(), "ratings.dat", b"");
    let m = write(t.path(), "movies.dat", MOVIES);
    let (path, line, msg) = parse_err(loaders::load_ml1m_from_files(&e, &m).unwrap_err());
    assert_eq!((path, line), (e, 0));
    assert!(msg.contains("empty"), "{msg}");

    let s = write(t.path(), "sequences.txt", b"\n\n");
    let (_, _, msg) = parse_err(loaders::load_sasrec_from_files(&s, None).unwrap_err());
    assert!(msg.contains("empty"), "{msg}");

    let g = write(t.path(), "x.csv", b"");
    let spec = loaders::GenericSpec::new(&g);
    let (_, _, msg) = parse_err(loaders::load_generic("x", &spec, None).unwrap_err());
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn gzip_ok_and_truncated() {
    let t = tempfile::tempdir().unwrap();
    let m = write(t.path(), "movies.dat", MOVIES);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for k in 0..2000 {
        writeln!(
            enc,
            "{}::{}::{}::{}",
            k % 7 + 1,
            k % 2 + 1,
            k % 5 + 1,
            978_300_000 + k
        )
        .unwrap();
    }
    let gz = enc.finish().unwrap();
    let ok = write(t.path(), "ratings.dat.gz", &gz);
    let d = loaders::load_ml1m_from_files(&ok, &m).unwrap();
    assert_eq!(d.interactions.len(), 2000);

    let cut = write(t.path(), "cut.dat.gz", &gz[..gz.len() / 2]);
    let (path, line, msg) = parse_err(loaders::load_ml1m_from_files(&cut, &m).unwrap_err());
    assert_eq!((path, line), (cut, 0));
    assert!(msg.contains("gzip"), "{msg}");
}

#[test]
fn bad_headers_and_item_files() {
    let t = tempfile::tempdir().unwrap();
    let s = write(t.path(), "sequences.txt", b"1 1\n");
    let i = write(t.path(), "items.tsv", b"id\ttitle\n1\tA\n");
    let (_, line, msg) = parse_err(loaders::load_sasrec_from_files(&s, Some(&i)).unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("header"), "{msg}");

    // A rated movie missing from movies.dat.
    let r = write(t.path(), "ratings.dat", b"1::9::5::1\n");
    let m = write(t.path(), "movies.dat", MOVIES);
    let (path, _, msg) = parse_err(loaders::load_ml1m_from_files(&r, &m).unwrap_err());
    assert_eq!(path, m);
    assert!(msg.contains("movie 9"), "{msg}");

    // Wrong field count in u.item.
    let u = write(t.path(), "u.data", b"1\t1\t5\t1\n");
    let ui = write(t.path(), "u.item", b"1|A (1995)|x\n");
    let (path, line, msg) = parse_err(loaders::load_ml100k_from_files(&u, &ui, None).unwrap_err());
    assert_eq!((path, line), (ui, 1));
    assert!(msg.contains("expected 24"), "{msg}");
}

#[test]
fn amazon_small_and_bad() {
    let t = tempfile::tempdir().unwrap();
    let seq = write(t.path(), "seq.txt", b"1 2 1\n2 1\n");
    let map = write(
        t.path(),
        "map.tsv",
        b"p5_item_id\tasin\tplrec_item_id\n1\tB1\t20\n2\tB2\t10\n",
    );
    let desc = write(
        t.path(),
        "d.csv",
        b"item_id:token\ttitle:token\tcategories:token_seq\tbrand:token\n10\t\"Two\nlines &amp; more\"\t'Beauty', \"Men's\"\t\n20\tOne &#39;x&#39;\t'Beauty'\tAcme &amp; Co\n",
    );
    let d = loaders::load_amazon_p5("b", &seq, &desc, &map).unwrap();
    assert_eq!(d.item_text[0].title, "One 'x'");
    assert_eq!(d.item_text[0].brand.as_deref(), Some("Acme & Co"));
    assert_eq!(d.item_text[1].title, "Two\nlines & more");
    assert_eq!(d.item_text[1].categories, ["Beauty", "Men's"]);
    assert_eq!(d.item_text[1].brand, None);
    let s: Vec<&str> = d.sequences()[0].iter().map(|&i| d.items.raw(i)).collect();
    assert_eq!(s, ["2", "1"]);

    let bad = write(t.path(), "bad.txt", b"1 2 1\n2\n");
    let (_, line, msg) = parse_err(loaders::load_amazon_p5("b", &bad, &desc, &map).unwrap_err());
    assert_eq!(line, 2);
    assert!(msg.contains("at least one item"), "{msg}");

    let bad_csv = write(
        t.path(),
        "bad.csv",
        b"item_id:token\ttitle:token\n10\tA\n20\tB\textra\n",
    );
    let (path, line, msg) =
        parse_err(loaders::load_amazon_p5("b", &seq, &bad_csv, &map).unwrap_err());
    assert_eq!((path, line), (bad_csv, 3));
    assert!(msg.contains("expected 2 fields"), "{msg}");
}
