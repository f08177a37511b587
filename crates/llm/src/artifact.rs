//! The on-disk embedding table that later methods (TIGER, KAR, …) reuse.
//!
//! Format, version 1 (all integers little-endian):
//!
//! ```text
//! magic   8 bytes  "LLMRECEM"
//! version u32      1
//! hlen    u32      length of the JSON header
//! header  hlen     {"format_version":1,"model_id":..,"dim":..,"count":..,"text_sha256":[hex,..]}
//! body    count*dim f32, row-major
//! ```
//!
//! Files are written to a temporary sibling and renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use llmrec_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::embedder::Embedder;

const MAGIC: &[u8; 8] = b"LLMRECEM";
/// Current format version of embedding artifacts.
pub const FORMAT_VERSION: u32 = 1;

/// Hex sha256 of a text (as recorded in artifacts).
pub fn text_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Header {
    format_version: u32,
    model_id: String,
    dim: usize,
    count: usize,
    text_sha256: Vec<String>,
}

/// An embedding table read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTable {
    /// Model that produced the vectors.
    pub model_id: String,
    /// Vector dimension.
    pub dim: usize,
    /// Hex sha256 of each row's text.
    pub text_sha256: Vec<String>,
    /// Row-major `count × dim` values.
    pub data: Vec<f32>,
}

impl EmbeddingTable {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.text_sha256.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.text_sha256.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Checks that this table embeds exactly `texts` with `model_id`.
    pub fn check_matches(&self, path: &Path, model_id: &str, texts: &[String]) -> Result<()> {
        let bad = |message: String| Error::Artifact {
            path: path.to_path_buf(),
            message,
        };
        if self.model_id != model_id {
            return Err(bad(format!(
                "made with model {}, expected {model_id}",
                self.model_id
            )));
        }
        if self.len() != texts.len() {
            return Err(bad(format!(
                "has {} rows, expected {}",
                self.len(),
                texts.len()
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            if self.text_sha256[i] != text_sha256(t) {
                return Err(bad(format!("row {i}: text changed since it was embedded")));
            }
        }
        Ok(())
    }
}

/// Writes an embedding artifact (temporary file, then rename).
pub fn write_embeddings(
    path: &Path,
    model_id: &str,
    texts: &[String],
    vectors: &[Vec<f32>],
) -> Result<()> {
    if texts.len() != vectors.len() {
        return Err(Error::Invalid(format!(
            "{} texts but {} vectors",
            texts.len(),
            vectors.len()
        )));
    }
    let dim = vectors.first().map_or(0, |v| v.len());
    if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
        return Err(Error::Invalid(format!(
            "vector {i} has {} values, expected {dim}",
            v.len()
        )));
    }
    let header = serde_json::to_vec(&Header {
        format_version: FORMAT_VERSION,
        model_id: model_id.to_string(),
        dim,
        count: vectors.len(),
        text_sha256: texts.iter().map(|t| text_sha256(t)).collect(),
    })
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut buf = Vec::with_capacity(16 + header.len() + 4 * dim * vectors.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
    buf.extend_from_slice(&header);
    for v in vectors {
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Reads an embedding artifact written by [`write_embeddings`].
pub fn read_embeddings(path: &Path) -> Result<EmbeddingTable> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |message: String| Error::Artifact {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not an llmrec embedding table (bad magic)".into()));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {FORMAT_VERSION}; re-run `llmrec embed`"
        )));
    }
    let hlen = u32_at(12) as usize;
    let body_at = 16usize
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated header".into()))?;
    let h: Header =
        serde_json::from_slice(&bytes[16..body_at]).map_err(|e| bad(format!("bad header: {e}")))?;
    if h.text_sha256.len() != h.count {
        return Err(bad("header count and hash list disagree".into()));
    }
    let want = h
        .count
        .checked_mul(h.dim)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| bad("header sizes overflow".into()))?;
    let body = &bytes[body_at..];
    if body.len() != want {
        return Err(bad(format!(
            "body has {} bytes, header says {want} ({} × {} f32)",
            body.len(),
            h.count,
            h.dim
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(EmbeddingTable {
        model_id: h.model_id,
        dim: h.dim,
        text_sha256: h.text_sha256,
        data,
    })
}

/// Encodes `texts`, or reads them from the artifact `path` when it holds exactly
/// these texts; writes the artifact after encoding.
pub fn encode_cached(
    embedder: &Embedder,
    texts: &[String],
    path: &Path,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    if path.exists()
        && let Ok(table) = read_embeddings(path)
        && table
            .check_matches(path, embedder.model_id(), texts)
            .is_ok()
    {
        return Ok((0..table.len()).map(|i| table.row(i).to_vec()).collect());
    }
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        out.extend(embedder.embed(&refs)?);
        progress(out.len(), texts.len());
    }
    write_embeddings(path, embedder.model_id(), texts, &out)?;
    Ok(out)
}

/// Embeds item texts, reusing (and filling) the persistent cache keyed by
/// (model, text) when one is given. Returns one vector per text, in order.
pub fn embed_items(
    embedder: &Embedder,
    texts: &[String],
    cache: Option<&Cache>,
) -> Result<Vec<Vec<f32>>> {
    let model = embedder.model_id();
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    if let Some(c) = cache {
        for (i, t) in texts.iter().enumerate() {
            out[i] = c
                .get_embedding(model, t)?
                .filter(|v| v.len() == embedder.dim());
        }
    }
    let todo: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
    // Chunks keep memory bounded and let a killed run keep what it stored.
    for chunk in todo.chunks(1024) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        let vecs = embedder.embed(&batch)?;
        if let Some(c) = cache {
            let rows: Vec<(&str, &[f32])> = batch
                .iter()
                .zip(&vecs)
                .map(|(t, v)| (*t, v.as_slice()))
                .collect();
            c.put_embeddings(model, &rows)?;
        }
        for (&i, v) in chunk.iter().zip(vecs) {
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("sub/emb.bin");
        let texts = vec!["a".to_string(), "b c".to_string()];
        let vecs = vec![vec![1.0, -2.5, 3.0], vec![0.0, f32::MIN_POSITIVE, 7.0]];
        write_embeddings(&p, "m", &texts, &vecs).unwrap();
        let t = read_embeddings(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.row(1), vecs[1].as_slice());
        t.check_matches(&p, "m", &texts).unwrap();
        assert!(t.check_matches(&p, "other", &texts).is_err());
        assert!(t.check_matches(&p, "m", &["a".into(), "x".into()]).is_err());
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        // Truncated body.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(
            read_embeddings(&p)
                .unwrap_err()
                .to_string()
                .contains("body")
        );
        // Future version.
        let mut b2 = bytes.clone();
        b2[8] = 9;
        std::fs::write(&p, &b2).unwrap();
        assert!(
            read_embeddings(&p)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        assert!(write_embeddings(&p, "m", &texts, &vecs[..1]).is_err());
    }
}
