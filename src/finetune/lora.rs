//! LoRA adapter parameters: which projections they touch, their A and B
//! matrices as trainable variables, and the low-rank update
//! `scale · B(A·x)` with `scale = alpha / rank`, exactly as llama.cpp
//! applies an adapter (times the user's scale, 1 in training).
//!
//! A is [rank, n_in] and B is [n_out, rank], row-major: the same bytes as
//! llama.cpp's `lora_a` (ggml shape [n_in, rank]) and `lora_b` ([rank,
//! n_out]), so export is a copy.

use candle_core::{DType, Device, Tensor, Var};

use super::model::Config;
use super::rng::Rng;
use super::FinetuneError;

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

/// The trainable adapter.
pub(crate) struct Lora {
    pub(crate) rank: usize,
    pub(crate) alpha: f32,
    pub(crate) targets: Vec<Target>,
    /// Per (layer, target): (A, B).
    pub(crate) pairs: Vec<(usize, Target, Var, Var)>,
}

impl Lora {
    /// A fresh adapter: A from a scaled uniform (Kaiming, as PEFT), B = 0,
    /// so training starts exactly at the base model.
    pub(crate) fn new(
        cfg: &Config,
        rank: usize,
        alpha: f32,
        targets: &[Target],
        rng: &mut Rng,
        dtype: DType,
    ) -> Result<Lora, FinetuneError> {
        if rank == 0 {
            return Err(FinetuneError::Param("--rank must be at least 1".into()));
        }
        let mut pairs = Vec::new();
        for l in 0..cfg.n_layer {
            for &t in targets {
                let (n_in, n_out) = cfg.dims(t);
                let bound = 1.0 / (n_in as f64).sqrt();
                let a: Vec<f64> = (0..rank * n_in)
                    .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                    .collect();
                let a = Tensor::from_vec(a, (rank, n_in), &Device::Cpu)?.to_dtype(dtype)?;
                let b = Tensor::zeros((n_out, rank), dtype, &Device::Cpu)?;
                pairs.push((l, t, Var::from_tensor(&a)?, Var::from_tensor(&b)?));
            }
        }
        Ok(Lora {
            rank,
            alpha,
            targets: targets.to_vec(),
            pairs,
        })
    }

    pub(crate) fn scale(&self) -> f64 {
        f64::from(self.alpha) / self.rank as f64
    }

    fn index(&self, l: usize, t: Target) -> Option<usize> {
        let ti = self.targets.iter().position(|&x| x == t)?;
        Some(l * self.targets.len() + ti)
    }

    /// Layer `l`'s (A, B, scale) for projection `t`, if targeted.
    pub(crate) fn pair(&self, l: usize, t: Target) -> Option<(&Tensor, &Tensor, f64)> {
        let (_, _, a, b) = &self.pairs[self.index(l, t)?];
        Some((a.as_tensor(), b.as_tensor(), self.scale()))
    }

    pub(crate) fn vars(&self) -> Vec<&Var> {
        self.pairs.iter().flat_map(|(_, _, a, b)| [a, b]).collect()
    }

    pub(crate) fn n_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }
}

impl Lora {
    /// Read an adapter GGUF back into variables (tests compare the trainer's
    /// forward with llama.cpp's on the same file).
    pub(crate) fn from_file(
        path: &std::path::Path,
        cfg: &Config,
        dtype: DType,
    ) -> Result<Lora, FinetuneError> {
        let (info, g) = crate::adapter::inspect(path)?;
        let rank = info.rank as usize;
        let mut targets = Vec::new();
        let mut pairs = Vec::new();
        for l in 0..cfg.n_layer {
            for t in Target::ALL {
                let name = t.tensor_name(l);
                let (Some(ta), Some(tb)) = (
                    g.tensor(&format!("{name}.lora_a")),
                    g.tensor(&format!("{name}.lora_b")),
                ) else {
                    continue;
                };
                if ta.ggml_type != crate::gguf::GgmlType::F32
                    || tb.ggml_type != crate::gguf::GgmlType::F32
                {
                    return Err(FinetuneError::Unsupported(
                        "only f32 adapters can be read back".into(),
                    ));
                }
                let read = |ti: &crate::gguf::TensorInfo| -> Vec<f32> {
                    g.tensor_data(ti)
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                };
                let (n_in, n_out) = cfg.dims(t);
                let a = Tensor::from_vec(read(ta), (rank, n_in), &Device::Cpu)?.to_dtype(dtype)?;
                let b = Tensor::from_vec(read(tb), (n_out, rank), &Device::Cpu)?.to_dtype(dtype)?;
                if !targets.contains(&t) {
                    targets.push(t);
                }
                pairs.push((l, t, Var::from_tensor(&a)?, Var::from_tensor(&b)?));
            }
        }
        targets.sort_by_key(|t| *t as usize);
        // Keep `pairs` in (layer, target order) so `index` finds them.
        if pairs.len() != cfg.n_layer * targets.len() {
            return Err(FinetuneError::Unsupported(
                "adapter does not cover the same targets in every layer".into(),
            ));
        }
        Ok(Lora {
            rank,
            alpha: info.alpha,
            targets,
            pairs,
        })
    }
}
