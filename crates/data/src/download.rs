//! Fetching registry files into the cache: HTTPS via `ureq` (feature
//! `download`), written to a temporary file in the destination folder,
//! checked, then renamed, so a partial file never has the final name.

use std::fs::File;
use std::io::Read;
#[cfg(feature = "download")]
use std::io::Write;
use std::path::{Path, PathBuf};

use llmrec_core::{Error, Result};
use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary path next to `dest` (same folder, so rename is atomic).
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".part-{}", std::process::id()));
    dest.with_file_name(name)
}

/// Copies `src` into `part` while hashing; returns (sha256 hex, line count).
#[cfg(feature = "download")]
pub(crate) fn copy_hashing(mut src: impl Read, part: &Path) -> Result<(String, usize)> {
    let mut out = File::create(part).map_err(|e| Error::io(part, e))?;
    let mut h = Sha256::new();
    let mut lines = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| Error::Network(format!("reading into {}: {e}", part.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
    }
    out.sync_all().map_err(|e| Error::io(part, e))?;
    Ok((hex(&h.finalize()), lines))
}

/// Checks a finished `part` against `sha256` / `lines`, then renames it to `dest`.
/// On a mismatch the part file is removed.
pub(crate) fn finish(
    part: &Path,
    dest: &Path,
    got: (String, usize),
    sha256: Option<&str>,
    lines: Option<usize>,
) -> Result<()> {
    if let Some(want) = sha256
        && got.0 != want
    {
        let _ = std::fs::remove_file(part);
        return Err(Error::Checksum {
            path: dest.to_owned(),
            expected: want.to_owned(),
            actual: got.0,
        });
    }
    if let Some(want) = lines
        && got.1 != want
    {
        let _ = std::fs::remove_file(part);
        return Err(Error::Invalid(format!(
            "{}: downloaded file has {} lines, expected {want}",
            dest.display(),
            got.1
        )));
    }
    std::fs::rename(part, dest).map_err(|e| Error::io(dest, e))
}

/// Downloads `url` to `part` and returns (sha256 hex, line count).
#[cfg(feature = "download")]
pub(crate) fn fetch(url: &str, part: &Path) -> Result<(String, usize)> {
    eprintln!("downloading {url}");
    let resp = ureq::get(url)
        .call()
        .map_err(|e| Error::Network(format!("GET {url}: {e}")))?;
    let reader = resp.into_body().into_reader();
    let r = copy_hashing(reader, part);
    if r.is_err() {
        let _ = std::fs::remove_file(part);
    }
    r
}

/// Without the `download` feature nothing can be fetched.
#[cfg(not(feature = "download"))]
pub(crate) fn fetch(url: &str, _part: &Path) -> Result<(String, usize)> {
    Err(Error::Network(format!(
        "cannot fetch {url}: llmrec-data was built without the `download` feature"
    )))
}

/// Extracts `member` of the zip at `zip_path` into `part`; returns (sha256, lines).
#[cfg(feature = "download")]
pub(crate) fn extract(zip_path: &Path, member: &str, part: &Path) -> Result<(String, usize)> {
    let f = File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
    let mut z = zip::ZipArchive::new(f)
        .map_err(|e| Error::Invalid(format!("{}: not a valid zip: {e}", zip_path.display())))?;
    let entry = z.by_name(member).map_err(|e| {
        Error::Invalid(format!(
            "{}: zip has no member `{member}`: {e}",
            zip_path.display()
        ))
    })?;
    let r = copy_hashing(entry, part);
    if r.is_err() {
        let _ = std::fs::remove_file(part);
    }
    r
}

/// Member names of a zip file.
#[cfg(feature = "download")]
pub(crate) fn zip_members(zip_path: &Path) -> Result<Vec<String>> {
    let f = File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
    let z = zip::ZipArchive::new(f)
        .map_err(|e| Error::Invalid(format!("{}: not a valid zip: {e}", zip_path.display())))?;
    Ok(z.file_names().map(String::from).collect())
}

/// Without the `download` feature nothing can be extracted.
#[cfg(not(feature = "download"))]
pub(crate) fn extract(zip_path: &Path, _member: &str, _part: &Path) -> Result<(String, usize)> {
    Err(Error::Invalid(format!(
        "cannot unpack {}: built without the `download` feature",
        zip_path.display()
    )))
}

/// Without the `download` feature nothing can be listed.
#[cfg(not(feature = "download"))]
pub(crate) fn zip_members(zip_path: &Path) -> Result<Vec<String>> {
    Err(Error::Invalid(format!(
        "cannot read {}: built without the `download` feature",
        zip_path.display()
    )))
}

#[cfg(all(test, feature = "download"))]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn zip_member_extract_verify_rename() {
        let t = tempfile::tempdir().unwrap();
        let zp = t.path().join("a.zip");
        let mut w = zip::ZipWriter::new(File::create(&zp).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("ds/u.data", opts).unwrap();
        w.write_all(b"1\t1\t5\t1\n2\t1\t4\t2\n").unwrap();
        w.finish().unwrap();
        assert_eq!(zip_members(&zp).unwrap(), ["ds/u.data"]);

        let dest = t.path().join("u.data");
        let part = part_path(&dest);
        let got = extract(&zp, "ds/u.data", &part).unwrap();
        assert_eq!(got.1, 2);
        let want = sha(b"1\t1\t5\t1\n2\t1\t4\t2\n");
        finish(&part, &dest, got, Some(&want), Some(2)).unwrap();
        assert!(dest.is_file() && !part.exists());
        assert_eq!(sha256_file(&dest).unwrap(), want);

        // A mismatch leaves neither the final name nor the part file.
        let dest2 = t.path().join("v.data");
        let part2 = part_path(&dest2);
        let got = extract(&zp, "ds/u.data", &part2).unwrap();
        let e = finish(&part2, &dest2, got, Some(&"0".repeat(64)), None).unwrap_err();
        assert!(matches!(e, Error::Checksum { .. }));
        assert!(!dest2.exists() && !part2.exists());
        // A missing member is an error.
        assert!(extract(&zp, "ds/nope", &part2).is_err());
    }
}
