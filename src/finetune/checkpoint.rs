//! Training checkpoints: the adapter's variables, the optimizer's moments and
//! the step reached, in one GGUF file written atomically (temp file, fsync,
//! rename), so killing the trainer at any moment leaves either the previous
//! checkpoint or the new one, never a torn file. The run's configuration is
//! stored with it; `--resume` refuses a checkpoint made with different data
//! or settings, because that could not give the uninterrupted run's result.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::FinetuneError;
use crate::gguf::{GgufFile, GgufWriter, Value};

/// Everything that decides a run's result besides the base model weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub base_sha256: String,
    pub data_sha256: String,
    pub rank: usize,
    pub alpha: f32,
    pub targets: String,
    pub lr: f64,
    pub batch: usize,
    pub seq: usize,
    pub val: f64,
    pub seed: u64,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// The steps the learning rate's cosine decay spans: the first run's
    /// `total_steps`; a run extended by `--resume --steps N` trains its
    /// added steps at the schedule's floor (a tenth of `lr`). 0 in
    /// checkpoints written before it was kept: `total_steps`.
    #[serde(default)]
    pub schedule_steps: usize,
}

pub(crate) struct Checkpoint {
    pub(crate) config: TrainConfig,
    pub(crate) step: usize,
    pub(crate) adam_t: u64,
    pub(crate) params: Vec<Tensor>,
    pub(crate) m: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
}

fn ggml_dims(t: &Tensor) -> Vec<u64> {
    t.dims().iter().rev().map(|&d| d as u64).collect()
}

fn f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

pub(crate) fn save(path: &Path, ck: &Checkpoint) -> Result<(), FinetuneError> {
    let mut w = GgufWriter::new();
    w.kv(
        "general.architecture",
        Value::Str("ferrite-checkpoint".into()),
    )
    .kv("ferrite.ckpt.step", Value::U64(ck.step as u64))
    .kv("ferrite.ckpt.adam_t", Value::U64(ck.adam_t))
    .kv(
        "ferrite.ckpt.config",
        Value::Str(serde_json::to_string(&ck.config).expect("config serializes")),
    );
    for (kind, ts) in [("p", &ck.params), ("m", &ck.m), ("v", &ck.v)] {
        for (i, t) in ts.iter().enumerate() {
            w.tensor_f32(&format!("{kind}.{i}"), &ggml_dims(t), &f32s(t)?);
        }
    }
    w.write(path).map_err(|source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(path: &Path, what: &str) -> FinetuneError {
    FinetuneError::Checkpoint {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// A checkpoint's run configuration and the steps it has done, read from
/// its metadata alone (the run's settings are compared before its tensors
/// are read against this adapter's shapes).
pub(crate) fn header(path: &Path) -> Result<(TrainConfig, usize), FinetuneError> {
    read_header(&GgufFile::open(path)?, path)
}

fn read_header(g: &GgufFile, path: &Path) -> Result<(TrainConfig, usize), FinetuneError> {
    if g.architecture() != Some("ferrite-checkpoint") {
        return Err(bad(path, "not a ferrite training checkpoint"));
    }
    let config: TrainConfig = g
        .get_str("ferrite.ckpt.config")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad(path, "no readable run configuration"))?;
    let step = g
        .get_u64("ferrite.ckpt.step")
        .ok_or_else(|| bad(path, "no step"))? as usize;
    Ok((config, step))
}

pub(crate) fn load(path: &Path, n_vars: usize) -> Result<Checkpoint, FinetuneError> {
    let g = GgufFile::open(path)?;
    let bad = |what: &str| bad(path, what);
    let (config, step) = read_header(&g, path)?;
    let adam_t = g
        .get_u64("ferrite.ckpt.adam_t")
        .ok_or_else(|| bad("no optimizer step"))?;
    let read = |kind: &str| -> Result<Vec<Tensor>, FinetuneError> {
        (0..n_vars)
            .map(|i| {
                let missing = || {
                    bad(&format!(
                        "tensor {kind}.{i} missing: the adapter shape changed?"
                    ))
                };
                let t = g.tensor(&format!("{kind}.{i}")).ok_or_else(missing)?;
                let vals = g.tensor_f32(t).ok_or_else(missing)?;
                let dims: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
                Ok(Tensor::from_vec(vals, dims, &Device::Cpu)?)
            })
            .collect()
    };
    let params = read("p")?;
    let m = read("m")?;
    let v = read("v")?;
    if g.tensor(&format!("p.{n_vars}")).is_some() {
        return Err(bad(
            "more tensors than this adapter has: the adapter shape changed?",
        ));
    }
    Ok(Checkpoint {
        config,
        step,
        adam_t,
        params,
        m,
        v,
    })
}
