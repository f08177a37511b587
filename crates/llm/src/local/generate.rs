//! Sampling, batched generation, continuation scoring and constrained decoding: the
//! [`Llm`] trait for the local backend.

use crate::llm::{FinishReason, Generation, Llm, LogProb, Message, SamplingParams};
use candle_core::Tensor;
use llmrec_core::trie::Trie;
use llmrec_core::{Error, Result, Rng};
use std::time::Instant;

use super::*;

impl LocalLlm {
    pub(super) fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| {
                    if x > b.1 { (i, x) } else { b }
                })
                .0 as u32
        };
        if params.temperature <= 0.0 {
            return argmax();
        }
        let t = params.temperature as f64;
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut p: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x as f64 - m) / t).exp()))
            .collect();
        let z: f64 = p.iter().map(|x| x.1).sum();
        p.iter_mut().for_each(|x| x.1 /= z);
        if params.top_p < 1.0 {
            p.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut acc = 0.0;
            let mut keep = 0;
            for (i, x) in p.iter().enumerate() {
                acc += x.1;
                keep = i + 1;
                if acc >= params.top_p.max(0.0) as f64 {
                    break;
                }
            }
            p.truncate(keep.max(1));
        }
        let z: f64 = p.iter().map(|x| x.1).sum();
        let mut r = rng.next_f64() * z;
        for &(i, w) in &p {
            if r < w {
                return i;
            }
            r -= w;
        }
        p.last().map_or_else(argmax, |x| x.0)
    }

    /// Generates from already-tokenized prompt ids.
    pub fn generate_ids(&self, prompt: &[u32], params: &SamplingParams) -> Result<Generation> {
        self.generate_batch(&[prompt.to_vec()], std::slice::from_ref(params))
            .pop()
            .unwrap_or_else(|| Err(cerr("no result")))
    }

    /// Generates for several tokenized prompts at once: each prompt is
    /// processed alone (f32), then all unfinished sequences are decoded
    /// together, one [`LocalLlm::decode_step_batch`] per token. Results are
    /// the same as one sequence at a time; latency is each sequence's own
    /// time to finish.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &[SamplingParams],
    ) -> Vec<Result<Generation>> {
        struct Seq {
            idx: usize,
            out: Vec<u32>,
            rng: Rng,
            text: String,
            logits: Vec<f32>,
            cache: KvCache,
            done: Option<std::result::Result<FinishReason, String>>,
            ms: f64,
        }
        let t0 = Instant::now();
        let ms = || t0.elapsed().as_secs_f64() * 1e3;
        let mut results: Vec<Option<Result<Generation>>> =
            (0..prompts.len()).map(|_| None).collect();
        if params.len() != prompts.len() {
            let msg = format!(
                "{} prompts but {} sampling params",
                prompts.len(),
                params.len()
            );
            return (0..prompts.len())
                .map(|_| Err(Error::Invalid(msg.clone())))
                .collect();
        }
        let mut seqs = Vec::with_capacity(prompts.len());
        for (idx, prompt) in prompts.iter().enumerate() {
            let first = self.prefill(prompt).and_then(|(c, l)| {
                let row = l
                    .squeeze(0)
                    .and_then(|r| r.to_vec1::<f32>())
                    .map_err(cerr)?;
                Ok((c, row))
            });
            match first {
                Ok((cache, logits)) => seqs.push(Seq {
                    idx,
                    out: Vec::new(),
                    rng: Rng::new(params[idx].seed),
                    text: String::new(),
                    logits,
                    cache,
                    done: None,
                    ms: 0.0,
                }),
                Err(e) => results[idx] = Some(Err(e)),
            }
        }
        loop {
            let mut step_tokens = Vec::new();
            let mut step_seqs = Vec::new();
            for (k, s) in seqs.iter_mut().enumerate() {
                if s.done.is_some() {
                    continue;
                }
                let p = &params[s.idx];
                if s.out.len() >= p.max_tokens {
                    s.done = Some(Ok(FinishReason::Length));
                    s.ms = ms();
                    continue;
                }
                let next = Self::sample(&s.logits, p, &mut s.rng);
                if self.stop_ids.contains(&next) {
                    s.done = Some(Ok(FinishReason::Stop));
                    s.ms = ms();
                    continue;
                }
                s.out.push(next);
                match self.tokenizer.decode(&s.out, true) {
                    Ok(t) => s.text = t,
                    Err(e) => {
                        s.done = Some(Err(e.to_string()));
                        continue;
                    }
                }
                if let Some(cut) = p
                    .stop
                    .iter()
                    .filter(|x| !x.is_empty())
                    .filter_map(|x| s.text.find(x.as_str()))
                    .min()
                {
                    s.text.truncate(cut);
                    s.done = Some(Ok(FinishReason::StopString));
                    s.ms = ms();
                    continue;
                }
                if s.out.len() >= p.max_tokens || s.cache.pos + 1 > self.max_context {
                    s.done = Some(Ok(FinishReason::Length));
                    s.ms = ms();
                    continue;
                }
                step_tokens.push(next);
                step_seqs.push(k);
            }
            if step_tokens.is_empty() {
                break;
            }
            let mut caches: Vec<KvCache> = step_seqs
                .iter()
                .map(|&k| std::mem::take(&mut seqs[k].cache))
                .collect();
            let rows = self
                .decode_step_batch(&step_tokens, &mut caches)
                .and_then(|l| l.to_vec2::<f32>().map_err(cerr));
            match rows {
                Ok(rows) => {
                    for ((&k, c), r) in step_seqs.iter().zip(caches).zip(rows) {
                        seqs[k].cache = c;
                        seqs[k].logits = r;
                    }
                }
                Err(e) => {
                    for &k in &step_seqs {
                        seqs[k].done = Some(Err(e.to_string()));
                    }
                }
            }
        }
        for s in seqs {
            results[s.idx] = Some(match s.done {
                Some(Ok(finish)) => Ok(Generation {
                    text: s.text,
                    prompt_tokens: prompts[s.idx].len(),
                    completion_tokens: s.out.len(),
                    latency_ms: s.ms,
                    finish,
                }),
                Some(Err(e)) => Err(cerr(e)),
                None => Err(cerr("generation did not finish")),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(cerr("no result"))))
            .collect()
    }
}

impl Llm for LocalLlm {
    fn backend(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.model_id
    }

    fn count_prompt_tokens(&self, messages: &[Message]) -> Option<usize> {
        self.prompt_ids(messages).ok().map(|ids| ids.len())
    }

    fn chat(&self, messages: &[Message], params: &SamplingParams) -> Result<Generation> {
        let ids = self.prompt_ids(messages)?;
        self.generate_ids(&ids, params)
    }

    /// Batched decoding of all the conversations together.
    fn chat_batch(&self, batch: &[(&[Message], &SamplingParams)]) -> Vec<Result<Generation>> {
        let mut prompts = Vec::with_capacity(batch.len());
        let mut params = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        let mut out: Vec<Option<Result<Generation>>> = (0..batch.len()).map(|_| None).collect();
        for (i, (m, p)) in batch.iter().enumerate() {
            match self.prompt_ids(m) {
                Ok(ids) => {
                    prompts.push(ids);
                    params.push((*p).clone());
                    slots.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (i, r) in slots
            .into_iter()
            .zip(self.generate_batch(&prompts, &params))
        {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(cerr("no result"))))
            .collect()
    }

    /// Exact (f32) log-probs. The prompt is processed once; then all
    /// candidates go through one batched pass over its KV cache, each at its
    /// own positions under a tree attention mask (it sees the prompt and its
    /// own earlier tokens only).
    fn score_continuations(
        &self,
        prompt: &[Message],
        candidates: &[String],
    ) -> Result<Vec<LogProb>> {
        let ids = self.prompt_ids(prompt)?;
        let (cache, last) = self.prefill(&ids)?;
        let last = Self::log_softmax_rows(&last)?.remove(0);
        let toks: Vec<Vec<u32>> = candidates
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<_>>()?;
        // All candidates' tokens (but the last of each) go through one forward
        // pass over the shared prompt cache, each attending only to the prompt
        // and to its own earlier tokens (a "tree" mask), at its own positions.
        let p = cache.pos;
        let mut flat = Vec::new();
        let mut positions = Vec::new();
        let mut owner = Vec::new();
        let mut starts = Vec::with_capacity(toks.len());
        for (ci, t) in toks.iter().enumerate() {
            starts.push(flat.len());
            for (j, &tk) in t.iter().take(t.len().saturating_sub(1)).enumerate() {
                flat.push(tk);
                positions.push((p + j) as u32);
                owner.push(ci);
            }
        }
        let rows = if flat.is_empty() {
            Vec::new()
        } else {
            let n = flat.len();
            let max_pos = positions.iter().copied().max().unwrap_or(0) as usize;
            if max_pos >= self.max_context {
                return Err(cerr(format!(
                    "context of {} tokens exceeds the model's {}",
                    max_pos + 1,
                    self.max_context
                )));
            }
            let kv_len = p + n;
            let mut m = vec![0f32; n * kv_len];
            for i in 0..n {
                for j in 0..n {
                    if owner[j] != owner[i] || j > i {
                        m[i * kv_len + p + j] = f32::NEG_INFINITY;
                    }
                }
            }
            let f = || -> candle_core::Result<Tensor> {
                let mask = Tensor::from_vec(m, (n, kv_len), &self.device)?;
                let mut c2 = cache.clone();
                self.forward_masked(&flat, &positions, Some(&mask), &mut c2, true, true)
            };
            Self::log_softmax_rows(&f().map_err(cerr)?)?
        };
        Ok(toks
            .iter()
            .enumerate()
            .map(|(ci, t)| {
                if t.is_empty() {
                    return LogProb {
                        total: 0.0,
                        mean: 0.0,
                        n_tokens: 0,
                    };
                }
                let mut total = last[t[0] as usize] as f64;
                for (j, &tk) in t[1..].iter().enumerate() {
                    total += rows[starts[ci] + j][tk as usize] as f64;
                }
                LogProb {
                    total,
                    mean: total / t.len() as f64,
                    n_tokens: t.len(),
                }
            })
            .collect())
    }

    /// Greedy decoding masked by a token trie over `allowed` (each followed by
    /// the end-of-turn token): the answer is always one of `allowed`.
    fn generate_constrained(&self, prompt: &[Message], allowed: &[String]) -> Result<String> {
        if allowed.is_empty() {
            return Err(Error::Invalid(
                "constrained generation needs at least one allowed string".into(),
            ));
        }
        // Token sequences of the answers, each ending with the end-of-turn token; a
        // repeated answer keeps its first index.
        let mut trie: Trie<u32, usize> = Trie::new();
        for (i, a) in allowed.iter().enumerate() {
            let mut toks = self.encode(a)?;
            toks.push(self.end_of_turn);
            let _ = trie.insert(&toks, i);
        }
        let ids = self.prompt_ids(prompt)?;
        let (mut cache, l) = self.cached_prefix(&ids);
        let mut pending = ids[l..].to_vec();
        let mut node = Trie::<u32, usize>::ROOT;
        loop {
            if let Some(&i) = trie.value(node) {
                return Ok(allowed[i].clone());
            }
            let children = trie.children(node);
            let next = if children.len() == 1 {
                // Forced: no need to look at logits.
                children[0].0
            } else {
                let logits = self.forward(&pending, &mut cache, false, true)?;
                pending.clear();
                let row: Vec<f32> = logits.squeeze(0).and_then(|l| l.to_vec1()).map_err(cerr)?;
                children
                    .iter()
                    .map(|c| c.0)
                    .max_by(|a, b| row[*a as usize].total_cmp(&row[*b as usize]))
                    .unwrap_or(self.end_of_turn)
            };
            pending.push(next);
            node = match trie.child(node, next) {
                Some(n) => n,
                None => return Err(cerr("constrained decoding left the trie")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_sampling_stays_in_nucleus() {
        let logits = [10.0f32, 9.0, -5.0, -6.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            assert_eq!(LocalLlm::sample(&logits, &p, &mut rng), 0);
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.99,
            ..Default::default()
        };
        let got: std::collections::HashSet<u32> = (0..200)
            .map(|_| LocalLlm::sample(&logits, &p, &mut rng))
            .collect();
        assert!(got.contains(&0) && got.contains(&1) && !got.contains(&3));
        assert_eq!(
            LocalLlm::sample(&logits, &SamplingParams::default(), &mut rng),
            0
        );
    }
}
