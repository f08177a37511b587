//! Prompt-prefix reuse: the most recent prompts keep their KV caches, and a new
//! prompt starts from the longest cached prefix.

use candle_core::Tensor;
use llmrec_core::{Error, Result};

use super::*;

impl LocalLlm {
    /// A cache holding the longest prefix of `ids` shared with a remembered
    /// prompt (never all of `ids`), and that prefix's length.
    pub(super) fn cached_prefix(&self, ids: &[u32]) -> (KvCache, usize) {
        if !self.reuse_prefix {
            return (KvCache::default(), 0);
        }
        let guard = self.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
        let best = guard
            .iter()
            .map(|(prev, cache)| {
                let common = prev
                    .iter()
                    .zip(ids)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(ids.len().saturating_sub(1))
                    .min(cache.pos);
                (common, cache)
            })
            .max_by_key(|(common, _)| *common);
        if let Some((common, cache)) = best
            && common > 0
        {
            return (cache.truncated(common), common);
        }
        (KvCache::default(), 0)
    }

    /// Remembers `ids` and their cache for [`LocalLlm::cached_prefix`]
    /// (the most recent [`LocalConfig::prefix_slots`] prompts).
    pub(super) fn remember(&self, ids: &[u32], cache: &KvCache) {
        if self.reuse_prefix && cache.pos == ids.len() {
            let mut guard = self.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
            guard.retain(|(prev, _)| prev.as_slice() != ids);
            guard.push_front((ids.to_vec(), cache.clone()));
            guard.truncate(self.prefix_slots);
        }
    }

    /// Processes a prompt (reusing the longest prefix it shares with the
    /// previous prompt when [`LocalConfig::reuse_prefix`]) and returns its cache and last-position logits `(1, vocab)`.
    pub fn prefill(&self, ids: &[u32]) -> Result<(KvCache, Tensor)> {
        if ids.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let (mut cache, l) = self.cached_prefix(ids);
        let logits = self.forward(&ids[l..], &mut cache, false, true)?;
        self.remember(ids, &cache);
        Ok((cache, logits))
    }
}
