//! The forward pass: the exact f32 path (prompts, scoring, constrained decoding) and
//! the fused integer path for token-by-token decoding.

use candle_core::{DType, Tensor};
use llmrec_core::{Error, Result};
use llmrec_kernels::quant::{self as fused, DecodeMat};
use llmrec_kernels::team;

use super::*;

/// Runs `f` on the f32 data of a contiguous CPU tensor.
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg(
            "fused decoding runs on the CPU".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&data[a..b])),
        None => Err(candle_core::Error::Msg(
            "fused decoding needs contiguous tensors".into(),
        )),
    }
}

/// The fused decoding copy of a weight.
pub(super) fn need(l: &Linear) -> candle_core::Result<&DecodeMat> {
    l.f.as_ref()
        .ok_or_else(|| candle_core::Error::Msg("no fused weights".into()))
}

/// Attention of one query head `qh` (of KV group `gi`) over a layer's cache
/// → `yh`; `scores` is scratch space.
pub(super) fn attend_head(
    kv: &LayerKv,
    qh: &[f32],
    yh: &mut [f32],
    gi: usize,
    scores: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let hd = qh.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    for (seg, used) in &kv.segs {
        with_f32(&seg.k, |ks| {
            let base = gi * seg.cap * hd;
            for p in 0..*used {
                let kp = &ks[base + p * hd..base + (p + 1) * hd];
                scores.push(fused::dot(qh, kp) * scale);
            }
        })?;
    }
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for sc in scores.iter_mut() {
        *sc = (*sc - m).exp();
        sum += *sc;
    }
    let inv = 1.0 / sum;
    yh.fill(0.0);
    let mut idx = 0;
    for (seg, used) in &kv.segs {
        with_f32(&seg.v, |vs| {
            let base = gi * seg.cap * hd;
            for p in 0..*used {
                let a = scores[idx] * inv;
                idx += 1;
                let vp = &vs[base + p * hd..base + (p + 1) * hd];
                yh.iter_mut().zip(vp).for_each(|(o, x)| *o += a * x);
            }
        })?;
    }
    Ok(())
}

impl LocalLlm {
    /// Runs `tokens` through the model after what `cache` holds, extending it.
    ///
    /// Returns logits `(n, vocab)` for the last position (`all = false`, n = 1)
    /// or for every new position (`all = true`). `exact` forces the f32
    /// weights; otherwise single-token steps use the decode weights.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::Invalid("forward on no tokens".into()));
        }
        let pos = cache.pos;
        if pos + tokens.len() > self.max_context {
            return Err(cerr(format!(
                "context of {} tokens exceeds the model's {}",
                pos + tokens.len(),
                self.max_context
            )));
        }
        if !exact && tokens.len() == 1 && self.fused_ready() {
            return self
                .fused_step(tokens, std::slice::from_mut(cache))
                .map_err(cerr);
        }
        self.forward_inner(tokens, cache, all, exact || tokens.len() > 1)
            .map_err(cerr)
    }

    pub(super) fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        let pos = cache.pos;
        let kv_len = pos + t;
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..kv_len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (t, kv_len), &self.device)?)
        } else {
            None
        };
        let qpos: Vec<u32> = (pos..kv_len).map(|p| p as u32).collect();
        self.forward_masked(tokens, &qpos, mask.as_ref(), cache, all, exact)
    }

    /// Token embeddings of `ids`, scaled where the model scales them (Gemma).
    fn embed_rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.embed.index_select(ids, 0)?;
        match &self.gemma {
            Some(g) => x * g.embed_scale,
            None => Ok(x),
        }
    }

    /// The additive mask of a sliding-window layer for queries at positions `qpos`
    /// over keys at `0..cache_pos` and then at `qpos`: `mask` (or none) plus minus
    /// infinity for keys `window` or more positions back. `None` when the window
    /// hides nothing (every layer then uses `mask`).
    pub(super) fn window_mask(
        &self,
        qpos: &[u32],
        cache_pos: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(g) = &self.gemma else {
            return Ok(None);
        };
        let far = qpos.iter().any(|&q| q as usize >= g.window);
        if !far {
            return Ok(None);
        }
        let (t, kv_len) = (qpos.len(), cache_pos + qpos.len());
        let mut m = match mask {
            Some(m) => m.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0f32; t * kv_len],
        };
        for (i, &q) in qpos.iter().enumerate() {
            for j in 0..kv_len {
                let k = if j < cache_pos {
                    j
                } else {
                    qpos[j - cache_pos] as usize
                };
                if q as usize >= k + g.window {
                    m[i * kv_len + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (t, kv_len), &self.device).map(Some)
    }

    /// Rotary tables `(cos, sin)` of the positions `qpos` for a layer: the local ones
    /// for Gemma's sliding-window layers, else the global ones.
    fn rope_rows(&self, qpos: &Tensor, sliding: bool) -> candle_core::Result<(Tensor, Tensor)> {
        match (&self.gemma, sliding) {
            (Some(g), true) => Ok((
                g.local_cos.index_select(qpos, 0)?,
                g.local_sin.index_select(qpos, 0)?,
            )),
            _ => Ok((
                self.cos.index_select(qpos, 0)?,
                self.sin.index_select(qpos, 0)?,
            )),
        }
    }

    /// The transformer over `tokens` at positions `qpos`, appended after `cache`
    /// (whose keys sit at positions `0..cache.pos`), with an additive mask
    /// `(t, kv_len)`.
    pub(super) fn forward_masked(
        &self,
        tokens: &[u32],
        qpos: &[u32],
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        all: bool,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        let kv_len = cache.pos + t;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![LayerKv::default(); self.layers.len()];
        }
        let qpos_t = Tensor::new(qpos, &self.device)?;
        let global = self.rope_rows(&qpos_t, false)?;
        let (local, window) = match &self.gemma {
            Some(_) => (
                Some(self.rope_rows(&qpos_t, true)?),
                self.window_mask(qpos, cache.pos, mask)?,
            ),
            None => (None, None),
        };
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed_rows(&ids)?; // (t, dim)
        for (li, layer) in self.layers.iter().enumerate() {
            let ((cos, sin), m) = match (&local, layer.sliding) {
                (Some(l), true) => (l, window.as_ref().or(mask)),
                _ => (&global, mask),
            };
            let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let (q, k, v) = self.qkv(layer, &xn, exact)?;
            let y = self.attend(li, &q, &k, &v, cos, sin, m, cache)?;
            x = self.finish_layer(layer, x, &y, exact)?;
        }
        cache.pos = kv_len;
        let x = if all { x } else { x.narrow(0, t - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.eps)?;
        self.output.forward(&x, exact)
    }

    /// The query, key and value projections of `xn (t, hidden)`, with their
    /// biases where the model has them.
    pub(super) fn qkv(
        &self,
        layer: &Layer,
        xn: &Tensor,
        exact: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let q = layer.wq.forward(xn, exact)?;
        let k = layer.wk.forward(xn, exact)?;
        let v = layer.wv.forward(xn, exact)?;
        match &layer.qkv_bias {
            Some([bq, bk, bv]) => Ok((
                q.broadcast_add(bq)?,
                k.broadcast_add(bk)?,
                v.broadcast_add(bv)?,
            )),
            None => Ok((q, k, v)),
        }
    }

    /// Attention of one sequence's new rows `q (t, h*hd)`, `k`/`v (t, kvh*hd)`
    /// over its cache (which it extends) → `(t, h*hd)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let (h, kvh, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let rep = h / kvh;
        let t = q.dim(0)?;
        let q = q.reshape((t, h, hd))?.transpose(0, 1)?.contiguous()?;
        let k = k.reshape((t, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        let v = v.reshape((t, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        let (q, k) = match &self.layers[li].qk_norm {
            Some([qn, kn]) => (
                candle_nn::ops::rms_norm(&q, qn, self.eps)?,
                candle_nn::ops::rms_norm(&k, kn, self.eps)?,
            ),
            None => (q, k),
        };
        let rope = if self.rope_halves {
            candle_nn::rotary_emb::rope
        } else {
            candle_nn::rotary_emb::rope_i
        };
        let q = rope(&q.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        let k = rope(&k.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        cache.layers[li].append(&k, &v)?;
        let segs = cache.layers[li].views()?;
        // Grouped-query attention without repeating K/V: the `rep` query heads
        // that share a KV head become `rep * t` rows of one matrix product.
        let q = q.reshape((kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = segs
            .iter()
            .map(|(k, _)| q.matmul(&k.t()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut att = if scores.len() == 1 {
            (&scores[0] * scale)?
        } else {
            (Tensor::cat(&scores, 2)? * scale)?
        }; // (kvh, rep * t, kv_len)
        let kv_len = att.dim(2)?;
        if let Some(m) = mask {
            let m = m
                .unsqueeze(0)?
                .expand((rep, t, kv_len))?
                .reshape((rep * t, kv_len))?;
            att = att.broadcast_add(&m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let mut y: Option<Tensor> = None;
        let mut off = 0;
        for (_, v) in &segs {
            let len = v.dim(1)?;
            let part = if segs.len() == 1 {
                att.matmul(v)?
            } else {
                att.narrow(2, off, len)?.matmul(v)?
            };
            off += len;
            y = Some(match y {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        let y = y.ok_or_else(|| candle_core::Error::Msg("attention over an empty cache".into()))?;
        // (kvh, rep * t, hd) -> (h, t, hd) -> (t, h * hd)
        y.reshape((h, t, hd))?.transpose(0, 1)?.reshape((t, h * hd))
    }

    /// Output projection, residual and MLP of one layer.
    pub(super) fn finish_layer(
        &self,
        layer: &Layer,
        x: Tensor,
        attn: &Tensor,
        exact: bool,
    ) -> candle_core::Result<Tensor> {
        let mut y = layer.wo.forward(attn, exact)?;
        if let Some([post_attn, _]) = &layer.post_norms {
            y = candle_nn::ops::rms_norm(&y, post_attn, self.eps)?;
        }
        let x = (x + y)?;
        let xn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
        let g = layer.w_gate.forward(&xn, exact)?;
        let u = layer.w_up.forward(&xn, exact)?;
        // Gemma gates with GELU (tanh approximation), the others with SiLU.
        let act = if self.gemma.is_some() {
            g.gelu()?
        } else {
            candle_nn::ops::silu(&g)?
        };
        let mut y = layer.w_down.forward(&(act * u)?, exact)?;
        if let Some([_, post_ffn]) = &layer.post_norms {
            y = candle_nn::ops::rms_norm(&y, post_ffn, self.eps)?;
        }
        x + y
    }

    /// One decoding step for several sequences at once: `tokens[i]` is
    /// appended to `caches[i]`. The weight matmuls run on all rows together
    /// (each weight is read once per step); attention runs per sequence.
    /// Returns logits `(n, vocab)`.
    pub fn decode_step_batch(&self, tokens: &[u32], caches: &mut [KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            return Err(Error::Invalid(format!(
                "decode_step_batch: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        if let Some(c) = caches.iter().find(|c| c.pos + 1 > self.max_context) {
            return Err(cerr(format!(
                "context of {} tokens exceeds the model's {}",
                c.pos + 1,
                self.max_context
            )));
        }
        if self.fused_ready() {
            return self.fused_step(tokens, caches).map_err(cerr);
        }
        let mut f = || -> candle_core::Result<Tensor> {
            let n = tokens.len();
            for c in caches.iter_mut() {
                if c.layers.len() != self.layers.len() {
                    c.layers = vec![LayerKv::default(); self.layers.len()];
                }
            }
            let ids = Tensor::new(tokens, &self.device)?;
            let mut x = self.embed_rows(&ids)?; // (n, dim)
            // Per sequence: rotary rows (global, and Gemma's local ones) and the
            // sliding window's mask once the sequence is longer than the window.
            struct Row {
                global: (Tensor, Tensor),
                local: Option<(Tensor, Tensor)>,
                window: Option<Tensor>,
            }
            let rows: Vec<Row> = caches
                .iter()
                .map(|c| {
                    let p = Tensor::new(&[c.pos as u32], &self.device)?;
                    Ok(Row {
                        global: self.rope_rows(&p, false)?,
                        local: match &self.gemma {
                            Some(_) => Some(self.rope_rows(&p, true)?),
                            None => None,
                        },
                        window: self.window_mask(&[c.pos as u32], c.pos, None)?,
                    })
                })
                .collect::<candle_core::Result<_>>()?;
            for (li, layer) in self.layers.iter().enumerate() {
                let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
                let (q, k, v) = self.qkv(layer, &xn, false)?;
                let mut ys = Vec::with_capacity(n);
                for (i, c) in caches.iter_mut().enumerate() {
                    let r = &rows[i];
                    let ((cos, sin), m) = match (&r.local, layer.sliding) {
                        (Some(l), true) => (l, r.window.as_ref()),
                        _ => (&r.global, None),
                    };
                    ys.push(self.attend(
                        li,
                        &q.narrow(0, i, 1)?,
                        &k.narrow(0, i, 1)?,
                        &v.narrow(0, i, 1)?,
                        cos,
                        sin,
                        m,
                        c,
                    )?);
                }
                let y = Tensor::cat(&ys, 0)?;
                x = self.finish_layer(layer, x, &y, false)?;
            }
            for c in caches.iter_mut() {
                c.pos += 1;
            }
            let x = candle_nn::ops::rms_norm(&x, &self.norm, self.eps)?;
            self.output.forward(&x, false)
        };
        f().map_err(cerr)
    }

    /// Whether every weight has its fused decoding copy.
    pub(super) fn fused_ready(&self) -> bool {
        // The fused kernels know the llama layout only.
        self.gemma.is_none()
            && self.output.f.is_some()
            && self.layers.iter().all(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .all(|w| w.f.is_some())
            })
    }

    /// One decoding step for several sequences with the fused kernels:
    /// `tokens[i]` is appended to `caches[i]`; returns logits `(n, vocab)`.
    pub(super) fn fused_step(
        &self,
        tokens: &[u32],
        caches: &mut [KvCache],
    ) -> candle_core::Result<Tensor> {
        team::with_team(team::threads(), |team| {
            self.fused_step_with(team, tokens, caches)
        })
    }

    /// [`LocalLlm::fused_step`] with its team: the matrix products are split
    /// over the team, the rest runs on this thread.
    pub(super) fn fused_step_with(
        &self,
        team: &team::Team<'_>,
        tokens: &[u32],
        caches: &mut [KvCache],
    ) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        let (h, kvh, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        // `dim`: the residual stream; `qd`: all query heads side by side.
        let (dim, qd, kvd, half) = (self.hidden, h * hd, kvh * hd, hd / 2);
        for c in caches.iter_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = vec![LayerKv::default(); self.layers.len()];
            }
        }
        let mut x = vec![0f32; n * dim];
        with_f32(&self.embed, |e| {
            for (s, &t) in tokens.iter().enumerate() {
                let t = t as usize;
                x[s * dim..(s + 1) * dim].copy_from_slice(&e[t * dim..(t + 1) * dim]);
            }
        })?;
        let ff = need(&self.layers[0].w_gate)?.rows();
        let (mut xn, mut y, mut o) = (vec![0f32; n * dim], vec![0f32; n * qd], vec![0f32; n * dim]);
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let (mut g, mut u) = (vec![0f32; n * ff], vec![0f32; n * ff]);
        let mut xq = fused::Q8Rows::default();
        for (li, layer) in self.layers.iter().enumerate() {
            with_f32(&layer.attn_norm, |w| {
                fused::rms_norm(&x, w, self.eps, &mut xn)
            })?;
            xq.set(&xn, n, dim);
            fused::matmul_q8(
                team,
                &xq,
                &mut [
                    (need(&layer.wq)?, &mut q),
                    (need(&layer.wk)?, &mut k),
                    (need(&layer.wv)?, &mut v),
                ],
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                for (b, rows) in [(bq, &mut q), (bk, &mut k), (bv, &mut v)] {
                    with_f32(b, |b| {
                        for row in rows.chunks_exact_mut(b.len()) {
                            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                        }
                    })?;
                }
            }
            if let Some([qn, kn]) = &layer.qk_norm {
                for (w, rows) in [(qn, &mut q), (kn, &mut k)] {
                    with_f32(w, |w| fused::rms_norm_in_place(rows, w, self.eps))?;
                }
            }
            for (s, c) in caches.iter_mut().enumerate() {
                let pos = c.pos;
                let (qs, ks) = (&mut q[s * qd..(s + 1) * qd], &mut k[s * kvd..(s + 1) * kvd]);
                with_f32(&self.cos, |cos| {
                    with_f32(&self.sin, |sin| {
                        let (cr, sr) = (
                            &cos[pos * half..(pos + 1) * half],
                            &sin[pos * half..(pos + 1) * half],
                        );
                        for head in qs.chunks_exact_mut(hd).chain(ks.chunks_exact_mut(hd)) {
                            if self.rope_halves {
                                fused::rope_halves(head, cr, sr);
                            } else {
                                fused::rope_interleaved(head, cr, sr);
                            }
                        }
                    })
                })??;
                let kt = Tensor::from_vec(ks.to_vec(), (kvh, 1, hd), &self.device)?;
                let vt = Tensor::from_vec(
                    v[s * kvd..(s + 1) * kvd].to_vec(),
                    (kvh, 1, hd),
                    &self.device,
                )?;
                c.layers[li].append(&kt, &vt)?;
            }
            // Attention, one task per (sequence, head), split over the team: task `t`
            // writes head `t % h` of sequence `t / h`, the `t`-th `hd` values of `y`.
            debug_assert_eq!(qd, h * hd);
            let failed = std::sync::Mutex::new(None);
            let (caches_ref, q_ref) = (&*caches, &q);
            team.for_each_chunk(&mut y[..n * qd], hd, &|t, yh, scores: &mut Vec<f32>| {
                let (s, head) = (t / h, t % h);
                let qh = &q_ref[s * qd + head * hd..s * qd + (head + 1) * hd];
                let kv = &caches_ref[s].layers[li];
                if let Err(e) = attend_head(kv, qh, yh, head / (h / kvh), scores)
                    && let Ok(mut f) = failed.lock()
                {
                    *f = Some(e);
                }
            });
            if let Some(e) = failed.into_inner().ok().flatten() {
                return Err(e);
            }
            xq.set(&y, n, qd);
            fused::matmul_q8(team, &xq, &mut [(need(&layer.wo)?, &mut o)]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            with_f32(&layer.ffn_norm, |w| {
                fused::rms_norm(&x, w, self.eps, &mut xn)
            })?;
            xq.set(&xn, n, dim);
            fused::matmul_q8(
                team,
                &xq,
                &mut [(need(&layer.w_gate)?, &mut g), (need(&layer.w_up)?, &mut u)],
            );
            g.iter_mut()
                .zip(&u)
                .for_each(|(a, b)| *a = *a / (1.0 + (-*a).exp()) * b);
            xq.set(&g, n, ff);
            fused::matmul_q8(team, &xq, &mut [(need(&layer.w_down)?, &mut o)]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for c in caches.iter_mut() {
            c.pos += 1;
        }
        with_f32(&self.norm, |w| fused::rms_norm(&x, w, self.eps, &mut xn))?;
        let out = need(&self.output)?;
        let mut logits = vec![0f32; n * out.rows()];
        xq.set(&xn, n, dim);
        fused::matmul_q8(team, &xq, &mut [(out, &mut logits)]);
        Tensor::from_vec(logits, (n, out.rows()), &self.device)
    }

    /// Log-softmax of every row of `logits` (f64 accumulation), as rows.
    pub(super) fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<Vec<f32>> = logits
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2())
            .map_err(cerr)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m as f64 + r.iter().map(|&x| ((x - m) as f64).exp()).sum::<f64>().ln();
                r.iter().map(|&x| (x as f64 - lse) as f32).collect()
            })
            .collect())
    }

    /// Log-probabilities of every token of `tokens` after the first, from one
    /// plain forward pass with no cache (the reference for scoring).
    pub fn sequence_logprobs(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        let mut cache = KvCache::default();
        let logits = self.forward(tokens, &mut cache, true, true)?;
        let lp = Self::log_softmax_rows(&logits)?;
        Ok((1..tokens.len())
            .map(|i| lp[i - 1][tokens[i] as usize] as f64)
            .collect())
    }
}
