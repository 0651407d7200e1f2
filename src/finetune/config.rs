//! The shapes training needs: a llama-family model's hyperparameters, read
//! from its GGUF, and the projections an adapter can target. Both the
//! adapter (`lora`) and the forward pass (`model`) are built from them.

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

/// Shape of a llama-family model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) arch: String,
    pub(crate) n_layer: usize,
    pub(crate) d_model: usize,
    pub(crate) n_head: usize,
    pub(crate) n_head_kv: usize,
    pub(crate) d_ff: usize,
    pub(crate) n_vocab: usize,
    pub(crate) rms_eps: f64,
    pub(crate) rope_base: f64,
    pub(crate) rope_dim: usize,
    pub(crate) ctx_train: usize,
    /// RoPE on the two halves of each head (qwen2) instead of adjacent pairs.
    pub(crate) rope_neox: bool,
    /// Biases on the Q, K and V projections (qwen2).
    pub(crate) qkv_bias: bool,
}

impl Config {
    pub(crate) fn from_gguf(g: &GgufFile) -> Result<Config, FinetuneError> {
        let arch = g.architecture().unwrap_or("?").to_string();
        if arch != "llama" && arch != "qwen2" {
            return Err(FinetuneError::Unsupported(format!(
                "fine-tuning supports the llama (SmolLM, TinyLlama, Llama) and qwen2 (Qwen2, Qwen2.5) architectures, not `{arch}`"
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
        let n_vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.dims[1] as usize)
            .ok_or_else(|| FinetuneError::Unsupported("GGUF lacks token_embd.weight".into()))?;
        let cfg = Config {
            n_layer: u("block_count")?,
            d_model,
            n_head,
            n_head_kv,
            d_ff: u("feed_forward_length")?,
            n_vocab,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: f("rope.freq_base", 10000.0),
            rope_dim: u("rope.dimension_count").unwrap_or(d_model / n_head),
            ctx_train: u("context_length").unwrap_or(2048),
            // llama.cpp's llama_model_rope_type: qwen2 rotates the halves of
            // each head (NEOX), llama adjacent pairs of its permuted weights.
            rope_neox: arch == "qwen2",
            qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            arch,
        };
        if n_head == 0 || n_head_kv == 0 || d_model % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(FinetuneError::Unsupported(format!(
                "unusual head layout: {d_model} wide, {n_head} heads, {n_head_kv} KV heads"
            )));
        }
        Ok(cfg)
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// (n_in, n_out) of a projection.
    pub(crate) fn dims(&self, t: Target) -> (usize, usize) {
        let kv = self.n_head_kv * self.head_dim();
        match t {
            Target::Q | Target::O => (self.d_model, self.d_model),
            Target::K | Target::V => (self.d_model, kv),
            Target::Gate | Target::Up => (self.d_model, self.d_ff),
            Target::Down => (self.d_ff, self.d_model),
        }
    }
}
