//! A differentiable llama-family forward pass in candle, for training LoRA
//! adapters on top of frozen base weights.
//!
//! The base weights come from the same GGUF the runtime uses, dequantized to
//! f32 once; they are plain tensors, never variables, so they get no
//! gradients and no optimizer state. Only the adapter's A and B matrices are
//! `Var`s. The loss is computed only at the positions that carry a target
//! (assistant tokens of a chat), so the vocabulary projection, the largest
//! single matmul, runs on those rows alone.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{Config, Target};
use super::lora::Lora;
use super::ops::{CausalSoftmax, CrossEntropy, FrozenLinear, LoraLinear, RmsNorm, Rope};
use super::FinetuneError;
use crate::gguf::GgufFile;

struct Layer {
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    /// In `Target::ALL` order.
    proj: Vec<FrozenLinear>,
}

/// The frozen base model.
pub(crate) struct Base {
    pub(crate) cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    out_norm: RmsNorm,
    output: FrozenLinear,
    rope: Rope,
}

/// One training batch: `b` rows of `t` tokens (padded at the end), and the
/// flat positions `row·t + i` whose next token is a target.
pub(crate) struct Batch {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) tokens: Vec<u32>,
    pub(crate) rows: Vec<u32>,
    pub(crate) targets: Vec<u32>,
}

impl Base {
    /// Dequantize the base weights (all layers, or the first `n_layer`).
    pub(crate) fn load(
        path: &Path,
        n_layer: Option<usize>,
        dtype: DType,
        max_pos: usize,
    ) -> Result<Base, FinetuneError> {
        let g = GgufFile::open(path)?;
        g.check_model()?;
        let mut cfg = Config::from_gguf(&g)?;
        drop(g);
        if let Some(n) = n_layer {
            cfg.n_layer = n.min(cfg.n_layer);
        }
        let dev = Device::Cpu;
        let (mut file, content) = open_weights(path)?;
        let mut get = |name: &str| -> Result<Tensor, FinetuneError> {
            let q =
                content
                    .tensor(&mut file, name, &dev)
                    .map_err(|source| FinetuneError::Weights {
                        path: path.to_path_buf(),
                        tensor: Some(name.to_string()),
                        source: Box::new(source),
                    })?;
            Ok(q.dequantize(&dev)?.to_dtype(dtype)?)
        };
        let embed = get("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            get("output.weight")?
        } else {
            embed.clone()
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let mut proj = Vec::new();
            for t in Target::ALL {
                let w = get(&t.tensor_name(l))?;
                let (n_in, n_out) = cfg.dims(t);
                if w.dims() != [n_out, n_in] {
                    return Err(FinetuneError::Unsupported(format!(
                        "{} has shape {:?}, expected [{n_out}, {n_in}]",
                        t.tensor_name(l),
                        w.dims()
                    )));
                }
                proj.push(FrozenLinear::new(w)?);
            }
            layers.push(Layer {
                attn_norm: RmsNorm::new(&get(&format!("blk.{l}.attn_norm.weight"))?, cfg.rms_eps)?,
                ffn_norm: RmsNorm::new(&get(&format!("blk.{l}.ffn_norm.weight"))?, cfg.rms_eps)?,
                proj,
            });
        }
        let out_norm = RmsNorm::new(&get("output_norm.weight")?, cfg.rms_eps)?;
        let rope = Rope::new(cfg.head_dim(), cfg.rope_dim, cfg.rope_base, max_pos);
        Ok(Base {
            embed,
            layers,
            out_norm,
            output: FrozenLinear::new(output)?,
            rope,
            cfg,
        })
    }

    /// A projection plus, if the adapter has one there, its low-rank update.
    fn proj(
        &self,
        lora: Option<&Lora>,
        l: usize,
        t: Target,
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let base = &self.layers[l].proj[t as usize];
        match lora.and_then(|a| a.pair(l, t)) {
            Some((a, b, scale)) => LoraLinear {
                base: base.clone(),
                scale,
            }
            .forward(x, a, b),
            None => base.forward(x),
        }
    }

    /// Hidden states after the last layer's residual: [b·t, d].
    fn hidden(
        &self,
        lora: Option<&Lora>,
        b: usize,
        t: usize,
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim());
        let rep = nh / nkv;
        let ids = Tensor::from_slice(tokens, b * t, self.embed.device())?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let softmax = CausalSoftmax {
            scale: 1.0 / (hd as f64).sqrt(),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let q = self.proj(lora, l, Target::Q, &h)?;
            let k = self.proj(lora, l, Target::K, &h)?;
            let v = self.proj(lora, l, Target::V, &h)?;
            let q = self
                .rope
                .forward(&q.reshape((b, t, nh, hd))?.transpose(1, 2)?)?;
            let k = self
                .rope
                .forward(&k.reshape((b, t, nkv, hd))?.transpose(1, 2)?)?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            // Query heads that share a KV head are adjacent: fold them into
            // the row dimension instead of repeating K and V.
            let q = q.reshape((b, nkv, rep * t, hd))?;
            let att = softmax.forward(&q.matmul(&k.t()?)?)?;
            let o = att.matmul(&v)?;
            let o = o
                .reshape((b, nh, t, hd))?
                .transpose(1, 2)?
                .reshape((b * t, nh * hd))?;
            x = (x + self.proj(lora, l, Target::O, &o)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let g = self.proj(lora, l, Target::Gate, &h)?;
            let u = self.proj(lora, l, Target::Up, &h)?;
            x = (x + self.proj(lora, l, Target::Down, &(g.silu()? * u)?)?)?;
        }
        Ok(x)
    }

    /// Mean next-token loss over the batch's target positions.
    pub(crate) fn loss(&self, lora: Option<&Lora>, batch: &Batch) -> candle_core::Result<Tensor> {
        let x = self.hidden(lora, batch.b, batch.t, &batch.tokens)?;
        let rows = Tensor::from_slice(&batch.rows, batch.rows.len(), x.device())?;
        let h = self.out_norm.forward(&x.index_select(&rows, 0)?)?;
        let logits = self.output.forward(&h)?;
        let ce = CrossEntropy {
            targets: Arc::new(batch.targets.clone()),
        };
        ce.forward(&logits)?.mean(0)
    }

    /// Logits at every position of one sequence: [t, vocab] (tests compare
    /// them with llama.cpp's).
    pub(crate) fn logits(
        &self,
        lora: Option<&Lora>,
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let x = self.hidden(lora, 1, tokens.len(), tokens)?;
        self.output.forward(&self.out_norm.forward(&x)?)
    }
}

/// Open a GGUF and read candle's index of its tensors (the file is kept
/// open to read them from).
pub(super) fn open_weights(
    path: &Path,
) -> Result<(std::fs::File, candle_core::quantized::gguf_file::Content), FinetuneError> {
    let mut file = std::fs::File::open(path).map_err(|source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|source| {
            FinetuneError::Weights {
                path: path.to_path_buf(),
                tensor: None,
                source: Box::new(source),
            }
        })?;
    Ok((file, content))
}
