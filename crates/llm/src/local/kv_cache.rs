//! The KV cache: per layer, keys and values in segments that grow without copying,
//! cloneable and truncatable so that a prompt's cache serves many continuations.

use candle_core::Tensor;

/// Positions a fresh segment reserves for short appends (decoding steps), so
/// that tokens are written in place rather than copied.
pub(super) const SEGMENT_ROOM: usize = 256;

/// One stretch of a layer's keys and values: `(kv_heads, cap, head_dim)`
/// buffers whose leading positions are filled.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
    pub(super) cap: usize,
}

/// One layer's cache: segments, each with the length this cache uses of it.
/// Segments are shared between clones; a segment is written in place only
/// while this cache is its sole owner, so clones never see each other's tokens.
#[derive(Clone, Debug, Default)]
pub(super) struct LayerKv {
    pub(super) segs: Vec<(std::sync::Arc<Segment>, usize)>,
}

impl LayerKv {
    /// Appends `k`, `v` (`(kv_heads, t, head_dim)`, contiguous).
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let t = k.dim(1)?;
        if let Some((seg, used)) = self.segs.last_mut()
            && *used + t <= seg.cap
            && std::sync::Arc::get_mut(seg).is_some()
        {
            seg.k.slice_set(k, 1, *used)?;
            seg.v.slice_set(v, 1, *used)?;
            *used += t;
            return Ok(());
        }
        // A long append (a prompt) gets a segment of its own size; a short one
        // (decoding) gets room to grow.
        let cap = if t >= SEGMENT_ROOM / 4 {
            t
        } else {
            SEGMENT_ROOM
        };
        let (kvh, _, hd) = k.dims3()?;
        let seg = Segment {
            k: Tensor::zeros((kvh, cap, hd), k.dtype(), k.device())?,
            v: Tensor::zeros((kvh, cap, hd), v.dtype(), v.device())?,
            cap,
        };
        seg.k.slice_set(k, 1, 0)?;
        seg.v.slice_set(v, 1, 0)?;
        self.segs.push((std::sync::Arc::new(seg), t));
        Ok(())
    }

    /// The filled keys and values of each segment, as views.
    pub(super) fn views(&self) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.segs
            .iter()
            .map(|(s, used)| Ok((s.k.narrow(1, 0, *used)?, s.v.narrow(1, 0, *used)?)))
            .collect()
    }
}

/// The KV cache of one sequence. Cloning is cheap (segments are shared), so a
/// prompt's cache can be extended by several continuations independently:
/// each continuation writes into segments of its own.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerKv>,
    pub(super) pos: usize,
}

impl KvCache {
    /// The cache of the first `len` tokens (shares the segments, no copy).
    pub(super) fn truncated(&self, len: usize) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut left = len;
                let mut segs = Vec::new();
                for (s, used) in &l.segs {
                    if left == 0 {
                        break;
                    }
                    let take = (*used).min(left);
                    segs.push((s.clone(), take));
                    left -= take;
                }
                LayerKv { segs }
            })
            .collect();
        KvCache { layers, pos: len }
    }
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}
