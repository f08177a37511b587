//! Decoding: trie-constrained beam search with a KV cache, and TIGER as a
//! [`Recommender`].

use std::collections::HashSet;

use candle_core::Tensor;
use llmrec_core::{Error, ItemId, Query, Recommender, Result, UserId};

use crate::semantic_ids::SemanticIds;
use crate::trie::{NodeId, Trie};

use super::config::{BOS, Vocab};
use super::model::{EncoderBatch, TigerModel};

/// One finished beam.
#[derive(Debug, Clone, PartialEq)]
pub struct Beam {
    /// The item whose Semantic ID was generated; `None` when the ID is no item's
    /// (possible only with constraints off).
    pub item: Option<ItemId>,
    /// The generated codes (`levels + 1`).
    pub codes: Vec<u16>,
    /// Sum of the token log-probabilities (full-vocabulary softmax).
    pub log_prob: f32,
}

impl TigerModel {
    /// Beam search for every encoder row: `beam_size` beams, `depth` steps, with a KV
    /// cache. With `constrained`, only trie paths are explored (every result is an item);
    /// without, every code of each level is allowed and results may be invalid IDs.
    /// `excluded` is empty or holds one set of trie nodes per row (from
    /// [`Trie::covered`]): constrained beams of that row never enter those nodes, so
    /// excluded items (the history, when the evaluator leaves it out) take no beam.
    /// Results per row are sorted by descending log-probability.
    pub fn beam_search(
        &self,
        enc: &EncoderBatch,
        trie: &Trie,
        beam_size: usize,
        constrained: bool,
        excluded: &[HashSet<NodeId>],
    ) -> Result<Vec<Vec<Beam>>> {
        let e = |e: candle_core::Error| Error::model("tiger beam search", e);
        let depth = self.vocab.depth();
        if trie.depth() != depth {
            return Err(Error::Invalid(format!(
                "tiger: trie depth {} differs from the vocabulary's {depth}",
                trie.depth()
            )));
        }
        let w_max = beam_size.max(1);
        let b = enc.ids.dim(0).map_err(e)?;
        if !excluded.is_empty() && excluded.len() != b {
            return Err(Error::Invalid(format!(
                "tiger: {} exclusion sets for {b} rows",
                excluded.len()
            )));
        }
        let enc_out = self.encode(enc, None).map_err(e)?;
        let cross = self.cross_kv(&enc_out).map_err(e)?;
        let n_out = self.vocab.n_output();
        let d = self.cfg.d_model;
        const INVALID: NodeId = NodeId::MAX;

        // Live beams: `w` per row; row r's beams are r*w .. r*w + w.
        let mut w = 1usize;
        let mut scores = vec![0f32; b];
        let mut nodes = vec![Trie::ROOT; b];
        let mut prefixes: Vec<Vec<u16>> = vec![Vec::new(); b];
        let mut tokens = vec![BOS; b];
        let mut cache: Vec<(Option<Tensor>, Option<Tensor>)> =
            vec![(None, None); self.decoder.len()];
        for step in 0..depth {
            let ids = Tensor::from_slice(&tokens, tokens.len(), enc.ids.device()).map_err(e)?;
            let mut x = self
                .embed
                .index_select(&ids, 0)
                .and_then(|t| t.broadcast_add(&self.dec_pos.narrow(0, step, 1)?))
                .and_then(|t| t.reshape((b, w, d)))
                .map_err(e)?;
            for ((layer, kv), slot) in self.decoder.iter().zip(&cross).zip(cache.iter_mut()) {
                x = layer
                    .forward(
                        &x,
                        Some(b * w),
                        Some(slot),
                        None,
                        kv,
                        enc,
                        0.0,
                        None,
                        self.fused,
                    )
                    .map_err(e)?;
            }
            let logits = self
                .dec_norm
                .forward(&x, self.fused)
                .and_then(|y| self.logits(&y))
                .and_then(|l| l.reshape((b * w, n_out)))
                .and_then(|l| l.to_vec2::<f32>())
                .map_err(e)?;
            let size = self.vocab.level_size(step);
            let mut parents = Vec::with_capacity(b * w_max);
            let mut new_scores = Vec::with_capacity(b * w_max);
            let mut new_nodes = Vec::with_capacity(b * w_max);
            let mut new_prefix = Vec::with_capacity(b * w_max);
            let mut new_tokens = Vec::with_capacity(b * w_max);
            let mut cands: Vec<(f32, usize, u16, NodeId)> = Vec::new();
            for r in 0..b {
                cands.clear();
                let skip = excluded.get(r);
                for j in 0..w {
                    let row = r * w + j;
                    if scores[row] == f32::NEG_INFINITY {
                        continue;
                    }
                    let lg = &logits[row];
                    let max = lg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let lse = max + lg.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
                    let tok = |c: u16| self.vocab.token(step, c) as usize;
                    if constrained {
                        for &(c, child) in trie.children(nodes[row]) {
                            if skip.is_some_and(|s| s.contains(&child)) {
                                continue;
                            }
                            cands.push((scores[row] + lg[tok(c)] - lse, row, c, child));
                        }
                    } else {
                        for c in 0..size as u16 {
                            let child = if nodes[row] == INVALID {
                                INVALID
                            } else {
                                trie.child(nodes[row], c).unwrap_or(INVALID)
                            };
                            cands.push((scores[row] + lg[tok(c)] - lse, row, c, child));
                        }
                    }
                }
                let keep = w_max.min(cands.len());
                if keep > 0 && cands.len() > keep {
                    cands.select_nth_unstable_by(keep - 1, |a, b| {
                        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
                    });
                    cands.truncate(keep);
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
                for k in 0..w_max {
                    match cands.get(k) {
                        Some(&(s, row, c, child)) => {
                            parents.push(row as u32);
                            new_scores.push(s);
                            new_nodes.push(child);
                            let mut p = prefixes[row].clone();
                            p.push(c);
                            new_prefix.push(p);
                            new_tokens.push(self.vocab.token(step, c));
                        }
                        None => {
                            // Fewer candidates than beams: a dead beam.
                            parents.push((r * w) as u32);
                            new_scores.push(f32::NEG_INFINITY);
                            new_nodes.push(INVALID);
                            new_prefix.push(Vec::new());
                            new_tokens.push(BOS);
                        }
                    }
                }
            }
            if step + 1 < depth {
                let idx =
                    Tensor::from_slice(&parents, parents.len(), enc.ids.device()).map_err(e)?;
                for slot in cache.iter_mut() {
                    if let (Some(k), Some(v)) = (&slot.0, &slot.1) {
                        *slot = (
                            Some(k.index_select(&idx, 0).map_err(e)?),
                            Some(v.index_select(&idx, 0).map_err(e)?),
                        );
                    }
                }
            }
            w = w_max;
            scores = new_scores;
            nodes = new_nodes;
            prefixes = new_prefix;
            tokens = new_tokens;
        }
        Ok((0..b)
            .map(|r| {
                (0..w)
                    .map(|j| r * w + j)
                    .filter(|&row| scores[row] > f32::NEG_INFINITY)
                    .map(|row| Beam {
                        item: if nodes[row] == INVALID {
                            None
                        } else {
                            trie.item(nodes[row])
                        },
                        codes: prefixes[row].clone(),
                        log_prob: scores[row],
                    })
                    .collect()
            })
            .collect())
    }
}

/// Score given to items outside the beam. Finite, so that the evaluator ranks them
/// (after every beam item; tied among themselves, so a target outside the beam ranks
/// behind all of them) instead of counting them as masked.
pub const OUTSIDE_BEAM: f32 = f32::MIN;

/// TIGER as a [`Recommender`]: beam-searched items score their log-probability, all
/// others [`OUTSIDE_BEAM`].
#[derive(Debug, Clone)]
pub struct Tiger {
    model: TigerModel,
    codes: Vec<Vec<u16>>,
    trie: Trie,
    /// Beams per query (the most items that get a real score). Default 30.
    pub beam_size: usize,
    /// Constrained decoding (trie). Default true; false is a diagnostic.
    pub constrained: bool,
    /// With constrained decoding, keep each query's history items out of the beams.
    /// Set it when the evaluator excludes the history anyway (full ranking with
    /// `exclude_history`), so that no beam is spent on an item that cannot count.
    /// Default false.
    pub exclude_history: bool,
    /// Queries per beam search call. Default 32.
    pub chunk: usize,
}

impl Tiger {
    /// Wraps a trained network with its Semantic-ID table.
    pub fn new(model: TigerModel, ids: &SemanticIds) -> Result<Self> {
        if Vocab::new(ids, model.cfg.user_buckets) != model.vocab {
            return Err(Error::Invalid(
                "tiger: the Semantic-ID table does not match the model's vocabulary".into(),
            ));
        }
        Ok(Tiger {
            trie: Trie::new(&ids.codes)?,
            codes: ids.codes.clone(),
            model,
            beam_size: 30,
            constrained: true,
            exclude_history: false,
            chunk: 32,
        })
    }

    /// The network.
    pub fn model(&self) -> &TigerModel {
        &self.model
    }

    /// The trie of valid IDs.
    pub fn trie(&self) -> &Trie {
        &self.trie
    }

    /// Beam search for queries, in chunks of [`Tiger::chunk`].
    pub fn search(&self, queries: &[Query<'_>]) -> Result<Vec<Vec<Beam>>> {
        let device = self.model.embed.device().clone();
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(self.chunk.max(1)) {
            let rows: Vec<(Option<UserId>, &[ItemId])> =
                chunk.iter().map(|q| (q.user, q.history)).collect();
            let enc = EncoderBatch::new(
                &rows,
                &self.codes,
                &self.model.vocab,
                self.model.cfg.max_history,
                &device,
            )?;
            let excluded: Vec<HashSet<NodeId>> = if self.constrained && self.exclude_history {
                chunk
                    .iter()
                    .map(|q| self.trie.covered(&self.codes, q.history))
                    .collect()
            } else {
                Vec::new()
            };
            out.extend(self.model.beam_search(
                &enc,
                &self.trie,
                self.beam_size,
                self.constrained,
                &excluded,
            )?);
        }
        Ok(out)
    }

    /// Fraction of the top-`k` beams that are not a valid item ID, over `queries`.
    pub fn invalid_rate(&self, queries: &[Query<'_>], k: usize) -> Result<f64> {
        let beams = self.search(queries)?;
        let (mut bad, mut all) = (0usize, 0usize);
        for b in &beams {
            for beam in b.iter().take(k) {
                all += 1;
                bad += beam.item.is_none() as usize;
            }
        }
        Ok(if all == 0 {
            0.0
        } else {
            bad as f64 / all as f64
        })
    }
}

impl Recommender for Tiger {
    fn name(&self) -> String {
        "tiger".into()
    }

    fn n_items(&self) -> usize {
        self.codes.len()
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        self.score_batch(std::slice::from_ref(query), out)
    }

    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        let n = self.n_items();
        if out.len() != queries.len() * n {
            return Err(Error::Invalid(format!(
                "tiger: output has {} scores for {} queries of {n} items",
                out.len(),
                queries.len()
            )));
        }
        let beams = self.search(queries)?;
        for (row, b) in out.chunks_mut(n).zip(&beams) {
            row.fill(OUTSIDE_BEAM);
            for beam in b {
                if let Some(i) = beam.item {
                    row[i as usize] = beam.log_prob.max(OUTSIDE_BEAM / 2.0);
                }
            }
        }
        Ok(())
    }
}
