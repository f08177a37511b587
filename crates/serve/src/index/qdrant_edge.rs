//! The Qdrant engine, embedded (`qdrant-edge`): the item vectors live in a shard
//! folder on disk and searches run in process.
//!
//! The folder is built once from the embeddings and reused while its stamp
//! (`llmrec-index.json`: format, dataset fingerprint, items, width and a hash of
//! the vectors) matches; otherwise it is rebuilt. The stamp is written last
//! (temp file, then rename), so a build cut short is redone at the next start.

use std::path::{Path, PathBuf};

use llmrec_core::{Error, ItemId, Result};
use qdrant_edge::{
    Distance, EdgeConfig, EdgeShard, EdgeVectorParams, NamedQuery, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, ScoringQuery, UpdateOperation, VectorInternal,
    VectorStructInternal, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};

use super::{VectorIndex, best_k, row_count};

/// Version of the stamp and of the folder's layout.
const FORMAT: u32 = 1;
/// The stamp's file name inside the shard folder.
const STAMP: &str = "llmrec-index.json";
/// Points written per update.
const BATCH: usize = 512;

/// What a shard folder was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    format: u32,
    dataset: String,
    items: usize,
    dim: usize,
    vectors: String,
}

/// Cosine search in an embedded Qdrant shard; point `i` is item `i`.
pub struct QdrantEdgeIndex {
    shard: EdgeShard,
    items: usize,
}

fn qerr(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        message: format!("qdrant-edge: {what}: {e}"),
    }
}

/// FNV-1a over the vectors' bits: a change to any value rebuilds the shard.
fn vectors_hash(data: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in data {
        for b in x.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

impl QdrantEdgeIndex {
    /// Opens the shard at `dir` if its stamp matches `data` (row-major,
    /// `dim`-wide rows) for dataset `fingerprint`, else builds it there afresh.
    pub fn open_or_build(
        dir: &Path,
        fingerprint: &str,
        data: &[f32],
        dim: usize,
    ) -> Result<QdrantEdgeIndex> {
        let items = row_count(data, dim)?;
        let want = Stamp {
            format: FORMAT,
            dataset: fingerprint.to_string(),
            items,
            dim,
            vectors: vectors_hash(data),
        };
        let stamp_path = dir.join(STAMP);
        let have: Option<Stamp> = std::fs::read(&stamp_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if have.as_ref() == Some(&want) {
            let shard =
                EdgeShard::load(dir, None).map_err(|e| qerr(dir, "loading the shard", e))?;
            return Ok(QdrantEdgeIndex {
                shard,
                items: want.items,
            });
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut config = EdgeConfig::default();
        config.vectors.insert(
            String::new(),
            EdgeVectorParams {
                size: dim,
                distance: Distance::Cosine,
                on_disk: None,
                multivector_config: None,
                datatype: None,
                quantization_config: None,
                hnsw_config: None,
            },
        );
        let shard = EdgeShard::new(dir, config).map_err(|e| qerr(dir, "creating the shard", e))?;
        for (b, rows) in data.chunks(BATCH * dim).enumerate() {
            let points = rows
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, r)| {
                    let id = (b * BATCH + j) as u64;
                    PointStruct::new(id, r.to_vec(), serde_json::json!({})).into()
                })
                .collect();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(|e| qerr(dir, "writing points", e))?;
        }
        shard.flush();
        write_stamp(&stamp_path, &want)?;
        Ok(QdrantEdgeIndex {
            shard,
            items: want.items,
        })
    }

    /// The stored vector of item `item`.
    fn vector(&self, item: ItemId) -> Result<Vec<f32>> {
        let rec = self
            .shard
            .retrieve(
                &[PointId::NumId(u64::from(item))],
                Some(WithPayloadInterface::Bool(false)),
                Some(WithVector::Bool(true)),
            )
            .map_err(|e| qerr(self.shard.path(), "retrieving a point", e))?;
        let missing = || Error::Invalid(format!("item {item} is not indexed"));
        let v = rec
            .into_iter()
            .next()
            .and_then(|r| r.vector)
            .ok_or_else(missing)?;
        match v {
            VectorStructInternal::Single(v) => Ok(v),
            VectorStructInternal::Named(mut m) => match m.remove("") {
                Some(VectorInternal::Dense(v)) => Ok(v),
                _ => Err(missing()),
            },
            VectorStructInternal::MultiDense(_) => Err(missing()),
        }
    }
}

fn write_stamp(path: &Path, stamp: &Stamp) -> Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(stamp).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl VectorIndex for QdrantEdgeIndex {
    fn name(&self) -> &str {
        "qdrant-edge"
    }

    fn len(&self) -> usize {
        self.items
    }

    fn similar(&self, item: ItemId, k: usize) -> Result<Vec<(ItemId, f32)>> {
        if item as usize >= self.items {
            return Err(Error::Invalid(format!("item {item} is not indexed")));
        }
        let q = self.vector(item)?;
        let hits = self
            .shard
            .query(qdrant_edge::QueryRequest {
                prefetches: vec![],
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(q),
                    using: None,
                }))),
                filter: None,
                score_threshold: None,
                limit: k + 1,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(false),
            })
            .map_err(|e| qerr(self.shard.path(), "searching", e))?;
        let hits = hits.into_iter().filter_map(|p| match p.id {
            PointId::NumId(n) => ItemId::try_from(n).ok().map(|i| (i, p.score)),
            PointId::Uuid(_) => None,
        });
        Ok(best_k(hits, item, k))
    }
}
