//! The generic loader on small files.

use std::path::{Path, PathBuf};

use llmrec_core::Error;
use llmrec_data::loaders::{Column, GenericSpec, ItemTextCsv, ItemTextSpec, load_generic};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn header_names_timestamps_and_csv_text() {
    let t = tempfile::tempdir().unwrap();
    let p = write(
        t.path(),
        "x.tsv",
        b"ts\tuser\titem\tscore\n30\tu1\ti9\t4.5\n10\tu1\ti2\t3\n10\tu2\ti2\t1\n20\tu1\ti1\t2\n",
    );
    let spec = GenericSpec {
        path: p,
        delimiter: None,
        has_header: true,
        user_col: "user".into(),
        item_col: "item".into(),
        rating_col: Some("score".into()),
        timestamp_col: Some(Column::Name("ts".into())),
    };
    let text = write(
        t.path(),
        "items.csv",
        b"id,name,genres,brand\ni2,\"Two, quoted\",A|B,\ni9,Nine,,Acme\nzz,Unused,,\n",
    );
    let ts = ItemTextSpec::Csv(ItemTextCsv {
        path: text,
        delimiter: None,
        has_header: true,
        id_col: "id".into(),
        title_col: "name".into(),
        categories_col: Some("genres".into()),
        brand_col: Some(Column::Index(3)),
    });
    let d = load_generic("x", &spec, Some(&ts)).unwrap();
    assert_eq!(d.n_users(), 2);
    assert_eq!(d.n_items(), 3);
    let s: Vec<&str> = d.sequences()[0].iter().map(|&i| d.items.raw(i)).collect();
    assert_eq!(s, ["i2", "i1", "i9"]);
    let i2 = &d.item_text[d.items.get("i2").unwrap() as usize];
    assert_eq!(i2.title, "Two, quoted");
    assert_eq!(i2.categories, ["A", "B"]);
    assert_eq!(i2.brand, None);
    let i9 = &d.item_text[d.items.get("i9").unwrap() as usize];
    assert_eq!(i9.brand.as_deref(), Some("Acme"));
    // No text for i1: the raw id is the title.
    assert_eq!(d.item_text[d.items.get("i1").unwrap() as usize].title, "i1");
    assert_eq!(d.interactions[0].rating, Some(3.0));
}

#[test]
fn sniffed_delimiter_and_jsonl_text() {
    let t = tempfile::tempdir().unwrap();
    let p = write(t.path(), "x.dat", b"1;10\n1;20\n2;10\n");
    let j = write(
        t.path(),
        "items.jsonl",
        b"{\"item\": 10, \"title\": \"Ten\", \"categories\": [\"a\"]}\n{\"item\": \"20\", \"title\": \"Twenty\", \"brand\": \"B\"}\n",
    );
    let d = load_generic("x", &GenericSpec::new(p), Some(&ItemTextSpec::Jsonl(j))).unwrap();
    assert_eq!(d.n_users(), 2);
    assert_eq!(d.item_text[0].title, "Ten");
    assert_eq!(d.item_text[0].categories, ["a"]);
    assert_eq!(d.item_text[1].brand.as_deref(), Some("B"));
}

#[test]
fn generic_errors() {
    let t = tempfile::tempdir().unwrap();
    // Unknown header name.
    let p = write(t.path(), "x.csv", b"u,i\n1,2\n");
    let mut spec = GenericSpec::new(&p);
    spec.has_header = true;
    spec.user_col = "user".into();
    match load_generic("x", &spec, None).unwrap_err() {
        Error::Parse { line, message, .. } => {
            assert_eq!(line, 1);
            assert!(message.contains("`user`"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // Wrong field count.
    let p = write(t.path(), "y.csv", b"1,2,3\n1,2\n");
    let mut spec = GenericSpec::new(&p);
    spec.rating_col = Some(Column::Index(2));
    match load_generic("y", &spec, None).unwrap_err() {
        Error::Parse { line, message, .. } => {
            assert_eq!(line, 2);
            assert!(message.contains("expected 3 fields"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // Non-numeric rating.
    let p = write(t.path(), "z.csv", b"1,2,x\n");
    let mut spec = GenericSpec::new(&p);
    spec.rating_col = Some(Column::Index(2));
    match load_generic("z", &spec, None).unwrap_err() {
        Error::Parse { line, message, .. } => {
            assert_eq!(line, 1);
            assert!(message.contains("rating"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // Bad JSONL line.
    let p = write(t.path(), "w.csv", b"1,2\n");
    let j = write(t.path(), "t.jsonl", b"{\"item\": 2}\nnot json\n");
    match load_generic("w", &GenericSpec::new(&p), Some(&ItemTextSpec::Jsonl(j))).unwrap_err() {
        Error::Parse { line, .. } => assert_eq!(line, 2),
        e => panic!("{e:?}"),
    }
}
