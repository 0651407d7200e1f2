//! A differentiable forward pass in candle for the llama family (llama,
//! qwen2, gemma3: their differences are `Config` flags), for training LoRA
//! adapters on top of frozen base weights.
//!
//! The base weights come from the same GGUF the runtime uses and stay in
//! its quantization, memory-mapped (`qweight`); a layer's matrices are
//! dequantized for its matmuls and dropped after (QLoRA's scheme). They are
//! never variables, so they get no gradients and no optimizer state. Only
//! the adapter's A and B matrices are `Var`s. The loss is computed only at
//! the positions that carry a target (assistant tokens of a chat), so the
//! vocabulary projection, the largest single matmul, runs on those rows
//! alone. `loss_and_grads` recomputes each layer in the backward pass
//! (gradient checkpointing) so activation memory is one layer's.

use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::config::{Activation, Config, Target};
use super::lora::Lora;
use super::ops::{CausalSoftmax, CrossEntropy, FrozenLinear, Gelu, LoraLinear, RmsNorm, Rope};
use super::qweight::QuantRows;
use super::FinetuneError;
use crate::gguf::GgufFile;

/// Target rows sent through the vocabulary projection at once: bounds the
/// logits (and their gradient) to `HEAD_ROWS × n_vocab` floats.
pub(crate) const HEAD_ROWS: usize = 64;

struct Layer {
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    /// Q, K and V biases (qwen2), in the activations' type.
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head RMSNorm of Q and K before RoPE (gemma3).
    qk_norm: Option<[RmsNorm; 2]>,
    /// RMSNorm of the attention and the feed-forward outputs before their
    /// residual adds (gemma3's `post_attention_norm`, `post_ffw_norm`).
    post_norm: Option<[RmsNorm; 2]>,
    /// In `Target::ALL` order.
    proj: Vec<FrozenLinear>,
}

/// The frozen base model.
pub(crate) struct Base {
    pub(crate) cfg: Config,
    /// The token embeddings, looked up row by row.
    embed: QuantRows,
    /// Whether the output projection is the embedding matrix itself.
    tied: bool,
    /// The activations' type: f32 to train, f64 for the gradient check.
    dtype: DType,
    layers: Vec<Layer>,
    out_norm: RmsNorm,
    output: FrozenLinear,
    rope: Rope,
    /// The sliding-window layers' RoPE (gemma3: base 10,000 against the
    /// global layers' 1,000,000).
    rope_swa: Option<Rope>,
}

/// The tensors of a base GGUF, read as the trainer holds them.
struct Weights<'a> {
    g: Arc<GgufFile>,
    path: &'a Path,
    dtype: DType,
}

impl Weights<'_> {
    fn err(&self, name: &str, msg: String) -> FinetuneError {
        FinetuneError::Weights {
            path: self.path.to_path_buf(),
            tensor: Some(name.to_string()),
            source: Box::new(candle_core::Error::Msg(msg)),
        }
    }

    fn info(&self, name: &str) -> Result<&crate::gguf::TensorInfo, FinetuneError> {
        self.g
            .tensor(name)
            .ok_or_else(|| self.err(name, "not in the file".into()))
    }

    /// A matrix, kept as stored.
    fn quant(&self, name: &str) -> Result<QuantRows, FinetuneError> {
        QuantRows::new(self.g.clone(), self.info(name)?).map_err(|e| self.err(name, e.to_string()))
    }

    /// A 1-D weight (a norm's, a bias), read as one row, in `dtype`.
    fn vector(&self, name: &str) -> Result<Tensor, FinetuneError> {
        let mut one = self.info(name)?.clone();
        one.dims.push(1);
        let q = QuantRows::new(self.g.clone(), &one).map_err(|e| self.err(name, e.to_string()))?;
        let mut v: Vec<f32> = Vec::new();
        q.dequant(0, q.rows, &mut v);
        Ok(Tensor::from_vec(v, q.rows * q.cols, &Device::Cpu)?.to_dtype(self.dtype)?)
    }

    fn norm(&self, name: &str, eps: f64) -> Result<RmsNorm, FinetuneError> {
        Ok(RmsNorm::new(&self.vector(name)?, eps)?)
    }

    /// Layer `l`: its seven projections (shapes checked), norms and biases.
    fn layer(&self, cfg: &Config, l: usize) -> Result<Layer, FinetuneError> {
        let mut proj = Vec::new();
        for t in Target::ALL {
            let w = self.quant(&t.tensor_name(l))?;
            let (n_in, n_out) = cfg.dims(t);
            if (w.rows, w.cols) != (n_out, n_in) {
                return Err(FinetuneError::Unsupported(format!(
                    "{} has shape [{}, {}], expected [{n_out}, {n_in}]",
                    t.tensor_name(l),
                    w.rows,
                    w.cols
                )));
            }
            proj.push(FrozenLinear::quantized(w));
        }
        let qkv_bias = if cfg.qkv_bias {
            let b = |t: &str| self.vector(&format!("blk.{l}.attn_{t}.bias"));
            Some([b("q")?, b("k")?, b("v")?])
        } else {
            None
        };
        let norms = |a: &str, b: &str, eps| -> Result<_, FinetuneError> {
            Ok(Some([
                self.norm(&format!("blk.{l}.{a}.weight"), eps)?,
                self.norm(&format!("blk.{l}.{b}.weight"), eps)?,
            ]))
        };
        let (qk_norm, post_norm) = if cfg.gemma_norms {
            (
                norms("attn_q_norm", "attn_k_norm", cfg.rms_eps)?,
                norms("post_attention_norm", "post_ffw_norm", cfg.rms_eps)?,
            )
        } else {
            (None, None)
        };
        Ok(Layer {
            qkv_bias,
            qk_norm,
            post_norm,
            attn_norm: self.norm(&format!("blk.{l}.attn_norm.weight"), cfg.rms_eps)?,
            ffn_norm: self.norm(&format!("blk.{l}.ffn_norm.weight"), cfg.rms_eps)?,
            proj,
        })
    }
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
    /// Map the base weights (all layers, or the first `n_layer`): the
    /// matrices stay in the file's quantization (`QuantRows`), the norms are
    /// dequantized to `dtype`.
    pub(crate) fn load(
        path: &Path,
        n_layer: Option<usize>,
        dtype: DType,
        max_pos: usize,
    ) -> Result<Base, FinetuneError> {
        let g = Arc::new(GgufFile::open(path)?);
        g.check_model()?;
        let mut cfg = Config::from_gguf(&g)?;
        if let Some(n) = n_layer {
            cfg.n_layer = n.min(cfg.n_layer);
        }
        let w = Weights { g, path, dtype };
        let tied = w.g.tensor("output.weight").is_none();
        let output = w.quant(if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        })?;
        let layers = (0..cfg.n_layer)
            .map(|l| w.layer(&cfg, l))
            .collect::<Result<Vec<_>, _>>()?;
        let rope = |base_scale| {
            Rope::with_mode(
                cfg.head_dim(),
                cfg.rope_dim,
                base_scale,
                max_pos,
                cfg.rope_neox,
            )
        };
        Ok(Base {
            rope: rope((cfg.rope_base, cfg.rope_freq_scale)),
            rope_swa: cfg
                .sliding_window
                .as_ref()
                .map(|s| rope((s.rope_base, 1.0))),
            tied,
            embed: w.quant("token_embd.weight")?,
            dtype,
            layers,
            out_norm: w.norm("output_norm.weight", cfg.rms_eps)?,
            output: FrozenLinear::quantized(output),
            cfg,
        })
    }

    /// Bytes of the frozen matrices as stored (mapped, not copied).
    pub(crate) fn weight_bytes(&self) -> usize {
        let output = if self.tied { 0 } else { self.output.nbytes() };
        self.embed.nbytes()
            + output
            + self
                .layers
                .iter()
                .flat_map(|l| l.proj.iter())
                .map(FrozenLinear::nbytes)
                .sum::<usize>()
    }

    /// A projection plus, if the adapter has one there, its low-rank update;
    /// `track: false` uses the adapter's values without recording the op
    /// for backpropagation.
    fn proj(
        &self,
        lora: Option<&Lora>,
        track: bool,
        (l, t): (usize, Target),
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let base = &self.layers[l].proj[t as usize];
        match lora.and_then(|a| a.pair(l, t)) {
            Some((a, b, scale)) => {
                let op = LoraLinear {
                    base: base.clone(),
                    scale,
                };
                if track {
                    op.forward(x, a, b)
                } else {
                    op.forward(x, &a.detach(), &b.detach())
                }
            }
            None => base.forward(x),
        }
    }

    /// The token embeddings of `tokens`: [n, d] in the activations' type.
    fn embed(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let rows = self.embed.gather(tokens)?;
        let x = Tensor::from_vec(rows, (tokens.len(), self.cfg.d_model), &Device::Cpu)?;
        match self.cfg.embed_scale {
            Some(s) => (x * s)?.to_dtype(self.dtype),
            None => x.to_dtype(self.dtype),
        }
    }

    /// Run `f` with layer `l`'s weights dequantized (see
    /// `FrozenLinear::materialize`): one layer's worth of dense weights at a
    /// time.
    fn with_dense_layer<R>(&self, l: usize, f: impl FnOnce() -> R) -> R {
        let proj = &self.layers[l].proj;
        for p in proj {
            p.materialize(self.dtype);
        }
        let r = f();
        for p in proj {
            p.release();
        }
        r
    }

    /// Layer `l` on hidden states `x` [b·t, d] → [b·t, d].
    fn layer(
        &self,
        lora: Option<&Lora>,
        track: bool,
        l: usize,
        (b, t): (usize, usize),
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let layer = &self.layers[l];
        let h = layer.attn_norm.forward(x)?;
        let o = self.attention(lora, track, l, (b, t), &h)?;
        let mut a = self.proj(lora, track, (l, Target::O), &o)?;
        if let Some([post, _]) = &layer.post_norm {
            a = post.forward(&a)?;
        }
        let x = (x + a)?;
        let h = layer.ffn_norm.forward(&x)?;
        let g = self.proj(lora, track, (l, Target::Gate), &h)?;
        let u = self.proj(lora, track, (l, Target::Up), &h)?;
        let g = match self.cfg.activation {
            Activation::Silu => g.silu()?,
            Activation::GeluTanh => Gelu.forward(&g)?,
        };
        let mut f = self.proj(lora, track, (l, Target::Down), &(g * u)?)?;
        if let Some([_, post]) = &layer.post_norm {
            f = post.forward(&f)?;
        }
        x + f
    }

    /// Layer `l`'s attention on its normed input `h` [b·t, d]: the heads'
    /// outputs [b·t, n_head·head_dim], before the output projection.
    fn attention(
        &self,
        lora: Option<&Lora>,
        track: bool,
        l: usize,
        (b, t): (usize, usize),
        h: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim());
        let rep = nh / nkv;
        let swa = cfg.is_swa(l);
        let softmax = CausalSoftmax {
            scale: cfg.attn_scale,
            window: cfg
                .sliding_window
                .as_ref()
                .filter(|_| swa)
                .map(|s| s.window),
        };
        let rope = match &self.rope_swa {
            Some(r) if swa => r,
            _ => &self.rope,
        };
        let layer = &self.layers[l];
        let mut q = self.proj(lora, track, (l, Target::Q), h)?;
        let mut k = self.proj(lora, track, (l, Target::K), h)?;
        let mut v = self.proj(lora, track, (l, Target::V), h)?;
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        if let Some([nq, nk]) = &layer.qk_norm {
            q = nq.forward(&q.reshape((b * t * nh, hd))?)?;
            k = nk.forward(&k.reshape((b * t * nkv, hd))?)?;
        }
        let q = rope.forward(&q.reshape((b, t, nh, hd))?.transpose(1, 2)?)?;
        let k = rope.forward(&k.reshape((b, t, nkv, hd))?.transpose(1, 2)?)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        // Query heads that share a KV head are adjacent: fold them into
        // the row dimension instead of repeating K and V.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let att = softmax.forward(&q.matmul(&k.t()?)?)?;
        let o = att.matmul(&v)?;
        o.reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))
    }

    /// Hidden states after the last layer's residual: [b·t, d], every op
    /// recorded for backpropagation when `track`.
    fn hidden(
        &self,
        lora: Option<&Lora>,
        track: bool,
        (b, t): (usize, usize),
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let mut x = self.embed(tokens)?;
        for l in 0..self.layers.len() {
            // Recorded ops keep their weights until `backward`: only an
            // unrecorded pass can drop each layer's dense copy after it.
            x = if track {
                self.layer(lora, track, l, (b, t), &x)?
            } else {
                self.with_dense_layer(l, || self.layer(lora, track, l, (b, t), &x))?
            };
        }
        Ok(x)
    }

    /// Per-row cross-entropy at `rows` of the hidden states `x`.
    fn head_loss(&self, x: &Tensor, rows: &[u32], targets: &[u32]) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_slice(rows, rows.len(), x.device())?;
        let h = self.out_norm.forward(&x.index_select(&idx, 0)?)?;
        let logits = self.output.forward(&h)?;
        CrossEntropy {
            targets: Arc::new(targets.to_vec()),
        }
        .forward(&logits)
    }

    /// Mean next-token loss over the batch's target positions, every op
    /// recorded (the whole graph is kept until `backward`).
    pub(crate) fn loss(&self, lora: Option<&Lora>, batch: &Batch) -> candle_core::Result<Tensor> {
        let x = self.hidden(lora, true, (batch.b, batch.t), &batch.tokens)?;
        self.head_loss(&x, &batch.rows, &batch.targets)?.mean(0)
    }

    /// The same loss as a number, nothing recorded (validation).
    pub(crate) fn loss_value(
        &self,
        lora: Option<&Lora>,
        batch: &Batch,
    ) -> candle_core::Result<f64> {
        let x = self.hidden(lora, false, (batch.b, batch.t), &batch.tokens)?;
        let mut sum = 0.0;
        for (r, t) in batch
            .rows
            .chunks(HEAD_ROWS)
            .zip(batch.targets.chunks(HEAD_ROWS))
        {
            sum += self
                .head_loss(&x, r, t)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(sum / batch.rows.len().max(1) as f64)
    }

    /// The loss and the adapter's gradients with activation memory of one
    /// layer (gradient checkpointing, Chen et al. 2016, "Training Deep Nets
    /// with Sublinear Memory Cost"): the forward pass records nothing and
    /// keeps only each layer's input; the vocabulary projection runs
    /// `HEAD_ROWS` rows at a time; then each layer, last first, is run again
    /// with recording on and backpropagated from the gradient of its output
    /// (the gradient of `sum(out · g)` with respect to the layer's input and
    /// adapter is `g` pulled back through the layer).
    pub(crate) fn loss_and_grads(
        &self,
        lora: &Lora,
        batch: &Batch,
    ) -> candle_core::Result<(f64, GradStore)> {
        let bt = (batch.b, batch.t);
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed(&batch.tokens)?;
        for l in 0..self.layers.len() {
            let next = self.with_dense_layer(l, || self.layer(Some(lora), false, l, bt, &x))?;
            inputs.push(x);
            x = next;
        }
        let n = batch.rows.len().max(1) as f64;
        let top = Var::from_tensor(&x)?;
        let mut g = x.zeros_like()?;
        let mut loss = 0.0;
        let mut store = None;
        for (r, t) in batch
            .rows
            .chunks(HEAD_ROWS)
            .zip(batch.targets.chunks(HEAD_ROWS))
        {
            let part = (self.head_loss(top.as_tensor(), r, t)?.sum_all()? / n)?;
            loss += part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let mut grads = part.backward()?;
            if let Some(gx) = grads.remove(top.as_tensor()) {
                g = (g + gx)?;
            }
            store = Some(grads);
        }
        let Some(mut store) = store else {
            candle_core::bail!("a batch without targets");
        };
        for l in (0..self.layers.len()).rev() {
            let input = Var::from_tensor(&inputs[l])?;
            let mut grads = self.with_dense_layer(l, || {
                let out = self.layer(Some(lora), true, l, bt, input.as_tensor())?;
                (out * &g)?.sum_all()?.backward()
            })?;
            for t in Target::ALL {
                if let Some((a, b, _)) = lora.pair(l, t) {
                    for v in [a, b] {
                        if let Some(gv) = grads.remove(v) {
                            store.insert(v, gv);
                        }
                    }
                }
            }
            if l > 0 {
                g = grads.remove(input.as_tensor()).ok_or_else(|| {
                    candle_core::Error::Msg("no gradient for a layer's input".into())
                })?;
            }
        }
        Ok((loss, store))
    }

    /// Logits at every position of one sequence: [t, vocab] (tests compare
    /// them with llama.cpp's).
    pub(crate) fn logits(
        &self,
        lora: Option<&Lora>,
        tokens: &[u32],
    ) -> candle_core::Result<Tensor> {
        let x = self.hidden(lora, false, (1, tokens.len()), tokens)?;
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
