//! What a llama-family GGUF file says about its model (architecture, sizes, rotary
//! tables), read once the same way for the inference backend ([`crate::local`]) and
//! the LoRA trainer ([`crate::lora`]).

use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use llmrec_core::{Error, Result};

/// The architectures the inference backend supports.
pub const ARCHITECTURES: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

/// The architectures the LoRA trainer supports (its forward has no Gemma 3 parts yet).
pub const TRAINABLE_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// Gemma 3's departures from the llama layout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GemmaSpec {
    /// Keys a sliding-window layer sees: those less than this many positions back.
    pub(crate) window: usize,
    /// Every `period`-th layer attends globally; the others use the window.
    pub(crate) period: usize,
    /// Rotary base of the sliding-window layers (the global ones use `rope_base`).
    pub(crate) local_rope_base: f32,
}

fn cerr(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::model("gguf", e)
}

/// A GGUF metadata value by key; a missing key is an error naming it.
pub(crate) fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| cerr(format!("GGUF metadata has no `{key}`")))
}

/// An open GGUF file: its header and a reader for its tensors.
pub(crate) struct GgufFile {
    /// Metadata and tensor index.
    pub(crate) content: gguf_file::Content,
    /// Reader positioned anywhere; tensors are read by offset.
    pub(crate) reader: BufReader<std::fs::File>,
}

impl GgufFile {
    /// Opens `path` and reads its header; errors name the file.
    pub(crate) fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| Error::Artifact {
            path: path.to_path_buf(),
            message: format!("GGUF: {e}"),
        })?;
        Ok(GgufFile { content, reader })
    }

    /// The tensor `name`, as stored; an error names the file and the tensor.
    pub(crate) fn tensor(
        &mut self,
        path: &Path,
        name: &str,
    ) -> Result<candle_core::quantized::QTensor> {
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::Artifact {
                path: path.to_path_buf(),
                message: format!("tensor {name}: {e}"),
            })
    }

    /// Whether the file has a tensor `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

/// The sizes and settings of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    /// `general.architecture`: one of [`ARCHITECTURES`].
    pub(crate) arch: String,
    /// Query heads.
    pub(crate) n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub(crate) n_kv_head: usize,
    /// Transformer blocks.
    pub(crate) n_layer: usize,
    /// Width of the residual stream.
    pub(crate) dim: usize,
    /// Longest context the rotary tables cover (at most 32,768).
    pub(crate) max_context: usize,
    /// RMS-norm epsilon.
    pub(crate) eps: f32,
    /// Rotary base frequency.
    pub(crate) rope_base: f32,
    /// Size of one head (Qwen3 sets it apart from `dim / n_head`).
    pub(crate) head_dim: usize,
    /// Rotary pairs `(i, i + d/2)` (Qwen, Gemma) rather than `(2i, 2i + 1)` (llama).
    pub(crate) rope_halves: bool,
    /// Gemma 3: sliding-window layers, normalised sublayer outputs, GELU, scaled
    /// embeddings.
    pub(crate) gemma: Option<GemmaSpec>,
}

impl Spec {
    /// Reads the spec from a GGUF header; an unsupported architecture or
    /// inconsistent sizes are errors naming `path`.
    pub(crate) fn read(ct: &gguf_file::Content, path: &Path) -> Result<Spec> {
        let art = |message: String| Error::Artifact {
            path: path.to_path_buf(),
            message,
        };
        let arch = md(ct, "general.architecture")?
            .to_string()
            .map_err(cerr)?
            .clone();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(art(format!(
                "architecture `{arch}` is not supported (supported: {})",
                ARCHITECTURES.join(", ")
            )));
        }
        let u = |k: &str| -> Result<usize> {
            Ok(md(ct, &format!("{arch}.{k}"))?.to_u32().map_err(cerr)? as usize)
        };
        let n_head = u("attention.head_count")?;
        let n_kv_head = u("attention.head_count_kv")?;
        let n_layer = u("block_count")?;
        let dim = u("embedding_length")?;
        let max_context = u("context_length").unwrap_or(4096).min(32768);
        let eps = md(ct, &format!("{arch}.attention.layer_norm_rms_epsilon"))?
            .to_f32()
            .map_err(cerr)?;
        let rope_base = ct
            .metadata
            .get(&format!("{arch}.rope.freq_base"))
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(art(format!(
                "{n_head} attention heads do not split into {n_kv_head} key/value heads"
            )));
        }
        let head_dim = match u("attention.key_length") {
            Ok(k) => k,
            Err(_) => dim / n_head,
        };
        let gemma = if arch == "gemma3" {
            let window = u("attention.sliding_window")?;
            // llama.cpp and transformers fix Gemma 3's pattern: five local layers,
            // then one global; the file may say otherwise.
            let period = u("attention.sliding_window_type").unwrap_or(6).max(1);
            let local_rope_base = ct
                .metadata
                .get(&format!("{arch}.rope.local_freq_base"))
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(10000.0);
            if window == 0 {
                return Err(art("a sliding window of 0 positions".into()));
            }
            Some(GemmaSpec {
                window,
                period,
                local_rope_base,
            })
        } else {
            None
        };
        Ok(Spec {
            rope_halves: arch != "llama",
            gemma,
            arch,
            n_head,
            n_kv_head,
            n_layer,
            dim,
            max_context,
            eps,
            rope_base,
            head_dim,
        })
    }

    /// Rotary tables `(max_context, head_dim / 2)`: cosines and sines of each
    /// position times each frequency.
    pub(crate) fn rope_tables(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        self.rope_tables_with(self.rope_base, device)
    }

    /// [`Spec::rope_tables`] with rotary base `base`.
    pub(crate) fn rope_tables_with(&self, base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(self.max_context * half);
        let mut sin = Vec::with_capacity(self.max_context * half);
        for pos in 0..self.max_context {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (self.max_context, half), device).map_err(cerr)?;
        let sin = Tensor::from_vec(sin, (self.max_context, half), device).map_err(cerr)?;
        Ok((cos, sin))
    }
}
