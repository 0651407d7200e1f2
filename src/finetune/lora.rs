//! LoRA adapter parameters: which projections they touch, their A and B
//! matrices as trainable variables, and the low-rank update
//! `scale · B(A·x)` with `scale = alpha / rank`, exactly as llama.cpp
//! applies an adapter (times the user's scale, 1 in training).
//!
//! A is [rank, n_in] and B is [n_out, rank], row-major: the same bytes as
//! llama.cpp's `lora_a` (ggml shape [n_in, rank]) and `lora_b` ([rank,
//! n_out]), so export is a copy.

use candle_core::{DType, Device, Tensor, Var};

use super::config::{Config, Target};
use super::rng::Rng;
use super::FinetuneError;
use crate::adapter::{AdapterInfo, Pair};

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

    /// Draw every B uniformly from [-half_width, half_width] (tests: an
    /// adapter that changes the model from the first step).
    pub(crate) fn fill_b_uniform(
        &self,
        rng: &mut Rng,
        half_width: f64,
    ) -> Result<(), FinetuneError> {
        for (_, _, _, b) in &self.pairs {
            let vals: Vec<f64> = (0..b.elem_count())
                .map(|_| (2.0 * rng.uniform() - 1.0) * half_width)
                .collect();
            b.set(&Tensor::from_vec(vals, b.dims(), b.device())?.to_dtype(b.dtype())?)?;
        }
        Ok(())
    }

    /// Write as llama.cpp's adapter GGUF (f32), naming the base it was
    /// trained on.
    pub(crate) fn write(
        &self,
        path: &std::path::Path,
        name: &str,
        cfg: &Config,
        base_sha256: Option<&str>,
        base_name: Option<&str>,
    ) -> Result<(), FinetuneError> {
        let f32s = |v: &Var| -> candle_core::Result<Vec<f32>> {
            v.as_tensor()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let data = self
            .pairs
            .iter()
            .map(|(l, t, a, b)| Ok((t.tensor_name(*l), cfg.dims(*t), f32s(a)?, f32s(b)?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pairs: Vec<Pair<'_>> = data
            .iter()
            .map(|(base_tensor, (n_in, n_out), a, b)| Pair {
                base_tensor: base_tensor.clone(),
                n_in: *n_in,
                n_out: *n_out,
                a,
                b,
            })
            .collect();
        let info = AdapterInfo {
            name: name.to_string(),
            arch: cfg.arch.clone(),
            alpha: self.alpha,
            rank: self.rank as u64,
            targets: Target::list_string(&self.targets),
            base_sha256: base_sha256.map(str::to_string),
            base_name: base_name.map(str::to_string),
            n_pairs: pairs.len(),
            n_params: self.n_params() as u64,
        };
        crate::adapter::write(path, &info, &pairs)?;
        Ok(())
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
                let (Some(va), Some(vb)) = (g.tensor_f32(ta), g.tensor_f32(tb)) else {
                    return Err(FinetuneError::Unsupported(
                        "only f32 adapters can be read back".into(),
                    ));
                };
                let (n_in, n_out) = cfg.dims(t);
                let a = Tensor::from_vec(va, (rank, n_in), &Device::Cpu)?.to_dtype(dtype)?;
                let b = Tensor::from_vec(vb, (n_out, rank), &Device::Cpu)?.to_dtype(dtype)?;
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
