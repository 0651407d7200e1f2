//! Hooks for the integration tests' proofs (not a stable API): the trainer's
//! own logits, random adapters and a finite-difference gradient check, so the
//! tests can hold the trainer's forward against llama.cpp's on the real model.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::config::Target;
use super::lora::Lora;
use super::model::Base;
use super::rng::Rng;
use super::FinetuneError;

/// The trainer's logits [t][vocab] for `tokens`, with the adapter file
/// applied at scale 1 when given.
pub fn trainer_logits(
    model: &Path,
    adapter: Option<&Path>,
    tokens: &[u32],
) -> Result<Vec<Vec<f32>>, FinetuneError> {
    let base = Base::load(model, None, DType::F32, tokens.len())?;
    let lora = adapter
        .map(|p| Lora::from_file(p, &base.cfg, DType::F32))
        .transpose()?;
    Ok(base.logits(lora.as_ref(), tokens)?.to_vec2::<f32>()?)
}

/// Write an adapter for `model` with random A and B (B drawn at `b_std`;
/// 0 gives a fresh, no-op adapter).
pub fn write_random_adapter(
    model: &Path,
    out: &Path,
    rank: usize,
    alpha: f32,
    b_std: f64,
    seed: u64,
    base_sha256: Option<&str>,
) -> Result<(), FinetuneError> {
    let g = crate::gguf::GgufFile::open(model)?;
    let cfg = super::config::Config::from_gguf(&g)?;
    let mut rng = Rng::new(seed);
    let lora = Lora::new(&cfg, rank, alpha, &Target::ALL, &mut rng, DType::F32)?;
    lora.fill_b_uniform(&mut rng, b_std * 3f64.sqrt())?;
    lora.write(out, "random", &cfg, base_sha256, None)
}

/// One checked coordinate of the gradient check.
#[derive(Debug, Clone)]
pub struct GradCheck {
    pub param: String,
    pub analytic: f64,
    pub numeric: f64,
}

/// Finite-difference check of the adapter gradients in f64 on the first
/// `n_layer` layers of `model`: for a few entries of A and B in each target,
/// compare autograd with (L(θ+ε) − L(θ−ε)) / 2ε.
pub fn gradient_check(
    model: &Path,
    n_layer: usize,
    tokens: &[u32],
    seed: u64,
) -> Result<Vec<GradCheck>, FinetuneError> {
    let base = Base::load(model, Some(n_layer), DType::F64, tokens.len())?;
    let mut rng = Rng::new(seed);
    let lora = Lora::new(&base.cfg, 4, 8.0, &Target::ALL, &mut rng, DType::F64)?;
    // Non-zero B so that A's gradient is not trivially zero.
    lora.fill_b_uniform(&mut rng, 0.1)?;
    let t = tokens.len();
    let batch = super::data::batch(&[&super::data::Example {
        tokens: tokens.to_vec(),
        loss: vec![true; t],
    }]);
    let loss = |l: &Lora| -> Result<f64, FinetuneError> {
        Ok(base.loss(Some(l), &batch)?.to_scalar::<f64>()?)
    };
    // The analytic gradients come from the training path (per-layer
    // recomputation), the numeric ones from the plain forward pass.
    let (_, grads) = base.loss_and_grads(&lora, &batch)?;
    let eps = 1e-5;
    let mut out = Vec::new();
    for (l, tg, a, b) in &lora.pairs {
        for (which, var) in [("A", a), ("B", b)] {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| FinetuneError::Param(format!("no gradient for {which}")))?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let orig = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for _ in 0..2 {
                let i = rng.below(orig.len());
                let bump = |d: f64| -> Result<f64, FinetuneError> {
                    let mut v = orig.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), var.device())?)?;
                    loss(&lora)
                };
                let numeric = (bump(eps)? - bump(-eps)?) / (2.0 * eps);
                var.set(&Tensor::from_vec(orig.clone(), var.dims(), var.device())?)?;
                out.push(GradCheck {
                    param: format!("blk.{l}.{}.{which}[{i}]", tg.short()),
                    analytic: g[i],
                    numeric,
                });
            }
        }
    }
    Ok(out)
}

/// Write `model` with every tensor dequantized to f32 (same metadata,
/// `general.file_type` = all F32). llama.cpp then computes in f32 without
/// rounding activations to 8 bits, so an adapter's effect can be compared
/// with the trainer's far below Q4 rounding.
pub fn write_f32_model(model: &Path, out: &Path) -> Result<(), FinetuneError> {
    let (mut file, content) = super::model::open_weights(model)?;
    let dev = candle_core::Device::Cpu;
    let f32_type = [("general.file_type", crate::gguf::Value::U32(0))];
    rewrite(model, out, &f32_type, |w, _, t| {
        let q = content.tensor(&mut file, &t.name, &dev)?;
        let vals = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
        w.tensor_f32(&t.name, &t.dims, &vals);
        Ok(())
    })
}

/// Write `model` with some metadata keys set to other values, every tensor
/// copied as stored (e.g. gemma3 with a sliding window shorter than a
/// test's sequence, so both llama.cpp and the trainer mask it).
pub fn write_with_metadata(
    model: &Path,
    out: &Path,
    set: &[(&str, crate::gguf::Value)],
) -> Result<(), FinetuneError> {
    rewrite(model, out, set, |w, g, t| {
        w.tensor(&t.name, &t.dims, t.ggml_type, g.tensor_data(t).to_vec());
        Ok(())
    })
}

/// Write `model`'s metadata, with the keys in `set` replaced, and each of
/// its tensors as `tensor` writes it (given the source file), to `out`.
fn rewrite(
    model: &Path,
    out: &Path,
    set: &[(&str, crate::gguf::Value)],
    mut tensor: impl FnMut(
        &mut crate::gguf::GgufWriter,
        &crate::gguf::GgufFile,
        &crate::gguf::TensorInfo,
    ) -> Result<(), FinetuneError>,
) -> Result<(), FinetuneError> {
    let g = crate::gguf::GgufFile::open(model)?;
    let mut w = crate::gguf::GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for (k, v) in set {
        w.kv(k, v.clone());
    }
    for t in &g.tensors {
        tensor(&mut w, &g, t)?;
    }
    w.write(out).map_err(|source| FinetuneError::Io {
        path: out.to_path_buf(),
        source,
    })
}
