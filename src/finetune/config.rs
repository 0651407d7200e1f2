//! The shapes training needs: a llama-family model's hyperparameters, read
//! from its GGUF the way llama.cpp's loader reads them (llama, qwen2, and
//! gemma3 with its norms, GeGLU and sliding window), and the projections an
//! adapter can target. Both the adapter (`lora`) and the forward pass
//! (`model`) are built from them.

use super::FinetuneError;
use crate::gguf::GgufFile;

/// A projection an adapter can target, in the order layers store them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    pub fn short(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// The base model's GGUF tensor for this projection in layer `l`.
    pub fn tensor_name(self, l: usize) -> String {
        let t = match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        };
        format!("blk.{l}.{t}.weight")
    }

    /// Parse `q,k,v,o,gate,up,down` (any subset, any order; `all`).
    pub fn parse_list(s: &str) -> Result<Vec<Target>, String> {
        if s.trim() == "all" {
            return Ok(Target::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let t = Target::ALL
                .into_iter()
                .find(|t| t.short() == part)
                .ok_or_else(|| {
                    format!("unknown target `{part}`; choose from q,k,v,o,gate,up,down")
                })?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err("no targets given".into());
        }
        out.sort_by_key(|t| *t as usize);
        Ok(out)
    }

    pub fn list_string(targets: &[Target]) -> String {
        targets
            .iter()
            .map(|t| t.short())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The feed-forward block's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `x·σ(x)` (llama, qwen2: SwiGLU).
    Silu,
    /// GELU, tanh approximation (gemma3: GeGLU; llama.cpp's `ggml_gelu`).
    GeluTanh,
}

/// Sliding-window attention on some layers (gemma3): a query at position
/// `p` sees keys `p - window < k ≤ p` (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`),
/// and those layers use their own RoPE base.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlidingWindow {
    pub(crate) window: usize,
    /// Every `pattern`-th layer (the last of each group) attends globally,
    /// the others through the window (llama.cpp's `set_swa_pattern`).
    pub(crate) pattern: usize,
    pub(crate) rope_base: f64,
}

/// Shape of a llama-family model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) arch: String,
    pub(crate) n_layer: usize,
    pub(crate) d_model: usize,
    pub(crate) n_head: usize,
    pub(crate) n_head_kv: usize,
    /// Width of one attention head (`attention.key_length`; `d_model/n_head`
    /// when absent). gemma3-270m: 256 with `d_model` 640 and 4 heads.
    pub(crate) head_dim: usize,
    pub(crate) d_ff: usize,
    pub(crate) n_vocab: usize,
    pub(crate) rms_eps: f64,
    pub(crate) rope_base: f64,
    /// Linear RoPE scaling of the global layers (`rope.scaling.factor`;
    /// positions are multiplied by `1/factor`); 1 without.
    pub(crate) rope_freq_scale: f64,
    pub(crate) rope_dim: usize,
    pub(crate) ctx_train: usize,
    /// RoPE on the two halves of each head (qwen2, gemma3) instead of
    /// adjacent pairs.
    pub(crate) rope_neox: bool,
    /// Biases on the Q, K and V projections (qwen2).
    pub(crate) qkv_bias: bool,
    /// The scale of Q·Kᵀ before the softmax.
    pub(crate) attn_scale: f64,
    /// Embeddings multiplied by `√d_model` (gemma).
    pub(crate) embed_scale: Option<f64>,
    /// RMSNorm of each head's Q and K before RoPE, and of the attention and
    /// feed-forward outputs before their residual adds (gemma3).
    pub(crate) gemma_norms: bool,
    pub(crate) activation: Activation,
    pub(crate) sliding_window: Option<SlidingWindow>,
}

/// The architectures the trainer implements, as llama.cpp names them.
pub(crate) const ARCHES: [&str; 3] = ["llama", "qwen2", "gemma3"];

impl Config {
    pub(crate) fn from_gguf(g: &GgufFile) -> Result<Config, FinetuneError> {
        let arch = g.architecture().unwrap_or("?").to_string();
        if !ARCHES.contains(&arch.as_str()) {
            return Err(FinetuneError::Unsupported(format!(
                "fine-tuning supports the llama (SmolLM, TinyLlama, Llama), qwen2 (Qwen2, Qwen2.5) and gemma3 (Gemma 3) architectures, not `{arch}`"
            )));
        }
        let u = |k: &str| {
            g.get_u64(&format!("{arch}.{k}"))
                .map(|v| v as usize)
                .ok_or_else(|| FinetuneError::Unsupported(format!("GGUF lacks `{arch}.{k}`")))
        };
        let f = |k: &str, dflt: f64| {
            g.get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_f32())
                .map_or(dflt, f64::from)
        };
        let d_model = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(FinetuneError::Unsupported(format!(
                "unusual head layout: {n_head} heads, {n_head_kv} KV heads"
            )));
        }
        let head_dim = u("attention.key_length").unwrap_or(d_model / n_head);
        if head_dim == 0 || u("attention.value_length").unwrap_or(head_dim) != head_dim {
            return Err(FinetuneError::Unsupported(format!(
                "unusual head layout: keys {head_dim} wide, values {:?}",
                u("attention.value_length").ok()
            )));
        }
        let n_vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.dims[1] as usize)
            .ok_or_else(|| FinetuneError::Unsupported("GGUF lacks token_embd.weight".into()))?;
        let gemma = arch == "gemma3";
        if gemma && f("final_logit_softcapping", 0.0) != 0.0 {
            return Err(FinetuneError::Unsupported(
                "gemma3 with final logit soft-capping is not supported".into(),
            ));
        }
        let n_layer = u("block_count")?;
        let swa_rope_base = f("rope.freq_base_swa", 10000.0);
        let mut cfg = Config {
            n_layer,
            d_model,
            n_head,
            n_head_kv,
            head_dim,
            d_ff: u("feed_forward_length")?,
            n_vocab,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: f("rope.freq_base", 10000.0),
            rope_freq_scale: rope_freq_scale(g, &arch)?,
            rope_dim: u("rope.dimension_count").unwrap_or(head_dim),
            ctx_train: u("context_length").unwrap_or(2048),
            // llama.cpp's llama_model_rope_type: qwen2 and gemma3 rotate the
            // halves of each head (NEOX), llama adjacent pairs of its
            // permuted weights.
            rope_neox: arch != "llama",
            qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            embed_scale: None,
            gemma_norms: false,
            activation: Activation::Silu,
            sliding_window: None,
            arch,
        };
        if gemma {
            cfg.gemma3(g, swa_rope_base)?;
        }
        Ok(cfg)
    }

    /// gemma3's differences from llama (llama.cpp's `llama_model_gemma3`).
    fn gemma3(&mut self, g: &GgufFile, swa_rope_base: f64) -> Result<(), FinetuneError> {
        // f_attention_scale: 1/√(d_model/n_head) for the 27B (62 layers),
        // 1/√head_dim otherwise.
        if self.n_layer == 62 {
            self.attn_scale = 1.0 / ((self.d_model / self.n_head) as f64).sqrt();
        }
        self.embed_scale = Some((self.d_model as f64).sqrt());
        self.gemma_norms = true;
        self.activation = Activation::GeluTanh;
        self.sliding_window = sliding_window(g, &self.arch, swa_rope_base)?;
        Ok(())
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Whether layer `l` attends through the sliding window.
    pub(crate) fn is_swa(&self, l: usize) -> bool {
        self.sliding_window
            .as_ref()
            .is_some_and(|s| s.pattern == 0 || l % s.pattern < s.pattern - 1)
    }

    /// (n_in, n_out) of a projection.
    pub(crate) fn dims(&self, t: Target) -> (usize, usize) {
        let q = self.n_head * self.head_dim;
        let kv = self.n_head_kv * self.head_dim;
        match t {
            Target::Q => (self.d_model, q),
            Target::O => (q, self.d_model),
            Target::K | Target::V => (self.d_model, kv),
            Target::Gate | Target::Up => (self.d_model, self.d_ff),
            Target::Down => (self.d_ff, self.d_model),
        }
    }
}

/// `rope.scaling.type`: none, or linear (positions times `1/factor`, as
/// llama.cpp's `rope_freq_scale_train`); others (YaRN, LongRoPE) refused.
fn rope_freq_scale(g: &GgufFile, arch: &str) -> Result<f64, FinetuneError> {
    let kind = g
        .get_str(&format!("{arch}.rope.scaling.type"))
        .unwrap_or("none");
    let factor = g
        .get(&format!("{arch}.rope.scaling.factor"))
        .and_then(|v| v.as_f32())
        .map_or(1.0, f64::from);
    match kind {
        "none" => Ok(1.0),
        "linear" if factor > 0.0 => Ok(1.0 / factor),
        _ => Err(FinetuneError::Unsupported(format!(
            "RoPE scaling `{kind}` (factor {factor}) is not supported for training"
        ))),
    }
}

/// gemma3's sliding window: `attention.sliding_window` wide, on all but
/// every `attention.sliding_window_pattern`-th layer (6 when absent, as in
/// llama.cpp's gemma3 loader); none when the window is absent or 0.
fn sliding_window(
    g: &GgufFile,
    arch: &str,
    rope_base: f64,
) -> Result<Option<SlidingWindow>, FinetuneError> {
    let Some(window) = g.get_u64(&format!("{arch}.attention.sliding_window")) else {
        return Ok(None);
    };
    if window == 0 {
        return Ok(None);
    }
    let key = format!("{arch}.attention.sliding_window_pattern");
    let pattern = match g.get(&key) {
        None => 6,
        Some(v) => v.as_u64().ok_or_else(|| {
            FinetuneError::Unsupported(format!(
                "`{key}` as a per-layer array is not supported for training"
            ))
        })?,
    };
    Ok(Some(SlidingWindow {
        window: window as usize,
        pattern: pattern as usize,
        rope_base,
    }))
}
