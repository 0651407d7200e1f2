//! Will training fit? The trainer's peak memory estimated from the GGUF's
//! shapes and the run's settings before any work, checked against the
//! board's budget and the kernel's `MemAvailable`, as inference does (a
//! board pushed into the OOM killer loses whatever else it runs). The
//! refusal names the largest `--batch` and `--seq` that would fit.
//!
//! The terms, in bytes (f32 = 4), for `r = batch·seq` rows, `d` the model
//! width, `f` the feed-forward width, `h` the heads, `L` the layers:
//! - weights: the file's matrices as stored (memory-mapped, resident once
//!   read), plus one layer dequantized to f32 (`FrozenLinear::materialize`);
//! - adapter: its parameters, their gradients and AdamW's two moments (4×);
//! - one layer's activations: about `r·(14·d + 5·f)` floats, plus the
//!   attention scores and their softmax, `3·batch·h·seq²` floats;
//! - with `--checkpoint-layers`: each layer's input (`L·r·d` floats) and
//!   one layer's activations; without: every layer's activations;
//! - the vocabulary projection: logits, their gradient and the softmax for
//!   `HEAD_ROWS` rows (checkpointed) or every target row;
//! - a fixed 96 MiB for the runtime itself (llama.cpp's vocabulary,
//!   candle, the allocator's slack).
//!
//! Calibrated on SmolLM2-135M (`--batch 4 --seq 128`, 2 threads):
//! estimated 346 MiB checkpointed (measured peak RSS 334-342 MiB) and
//! 1,652 MiB without (measured 1,601-1,640 MiB).

use super::config::{Config, Target};

const MIB: u64 = 1024 * 1024;
const F32: u64 = 4;
const OVERHEAD: u64 = 96 * MIB;

/// What a run will hold at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainEstimate {
    pub weights: u64,
    pub adapter: u64,
    pub activations: u64,
    pub head: u64,
}

impl TrainEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.adapter + self.activations + self.head + OVERHEAD
    }

    /// `N MiB (weights .. + adapter .. + activations .. + logits ..)`.
    pub fn describe(&self) -> String {
        let m = |b: u64| b.div_ceil(MIB);
        format!(
            "{} MiB (weights {} + adapter and optimizer {} + activations {} + logits {} + runtime {})",
            m(self.total()),
            m(self.weights),
            m(self.adapter),
            m(self.activations),
            m(self.head),
            m(OVERHEAD)
        )
    }
}

/// The shapes and settings an estimate needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Bytes of the frozen matrices as stored.
    pub(crate) weight_bytes: u64,
    /// Parameters of one layer's seven projections.
    pub(crate) layer_params: u64,
    pub(crate) adapter_params: u64,
    pub(crate) n_layer: u64,
    pub(crate) d: u64,
    pub(crate) d_ff: u64,
    pub(crate) n_head: u64,
    pub(crate) n_vocab: u64,
}

impl Shape {
    pub(crate) fn new(cfg: &Config, weight_bytes: usize, adapter_params: usize) -> Shape {
        // The widest of the residual stream and the heads' concatenation
        // (gemma3-270m: 640 and 1024) bounds a layer's activations.
        let d = cfg.d_model.max(cfg.n_head * cfg.head_dim()) as u64;
        let f = cfg.d_ff as u64;
        Shape {
            weight_bytes: weight_bytes as u64,
            layer_params: Target::ALL
                .iter()
                .map(|&t| {
                    let (i, o) = cfg.dims(t);
                    (i * o) as u64
                })
                .sum(),
            adapter_params: adapter_params as u64,
            n_layer: cfg.n_layer as u64,
            d,
            d_ff: f,
            n_head: cfg.n_head as u64,
            n_vocab: cfg.n_vocab as u64,
        }
    }
}

/// The peak of a run of `batch` rows of `seq` tokens.
pub(crate) fn estimate(
    s: &Shape,
    batch: u64,
    seq: u64,
    checkpoint: bool,
    head_rows: u64,
) -> TrainEstimate {
    let r = batch * seq;
    let layer = F32 * (r * (14 * s.d + 5 * s.d_ff) + 3 * batch * s.n_head * seq * seq);
    let activations = if checkpoint {
        F32 * s.n_layer * r * s.d + layer
    } else {
        s.n_layer * layer
    };
    let head_rows = if checkpoint { head_rows.min(r) } else { r };
    TrainEstimate {
        weights: s.weight_bytes + F32 * s.layer_params,
        adapter: 4 * F32 * s.adapter_params,
        activations,
        head: 3 * F32 * head_rows * s.n_vocab,
    }
}

/// The largest `batch` (at `seq`) and the largest `seq` (at `batch`) whose
/// estimate is at most `limit`; `None` where even 1 row (2 tokens) does not fit.
pub(crate) fn largest_fitting(
    s: &Shape,
    (batch, seq): (u64, u64),
    checkpoint: bool,
    head_rows: u64,
    limit: u64,
) -> (Option<u64>, Option<u64>) {
    let fits = |b, t| estimate(s, b, t, checkpoint, head_rows).total() <= limit;
    let b = (1..=batch).rev().find(|&b| fits(b, seq));
    // Sequence lengths in steps of 16 (and the first 16 one by one), from
    // the shortest `--seq` accepts (2).
    let t = (2..=seq)
        .rev()
        .filter(|t| t % 16 == 0 || *t < 16)
        .find(|&t| fits(batch, t));
    (b, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Shape {
        Shape {
            weight_bytes: 98_000_000,
            layer_params: 3_538_944,
            adapter_params: 2_442_240,
            n_layer: 30,
            d: 576,
            d_ff: 1536,
            n_head: 9,
            n_vocab: 49152,
        }
    }

    #[test]
    fn checkpointing_bounds_activations_to_one_layer() {
        let s = smollm2();
        let on = estimate(&s, 4, 128, true, 64);
        let off = estimate(&s, 4, 128, false, 64);
        assert!(on.total() < 450 * MIB, "{}", on.describe());
        assert!(off.total() > 1400 * MIB, "{}", off.describe());
        assert_eq!(on.weights, off.weights);
    }

    #[test]
    fn the_largest_fitting_settings_fit_and_one_more_does_not() {
        let s = smollm2();
        let limit = 1500 * MIB;
        let (b, t) = largest_fitting(&s, (8, 256), false, 64, limit);
        let (b, t) = (b.unwrap(), t.unwrap());
        assert!(b < 8 && t < 256, "{b} {t}");
        assert!(estimate(&s, b, 256, false, 64).total() <= limit);
        assert!(estimate(&s, b + 1, 256, false, 64).total() > limit);
        assert!(estimate(&s, 8, t, false, 64).total() <= limit);
        assert!(estimate(&s, 8, t + 16, false, 64).total() > limit);
        assert_eq!(largest_fitting(&s, (8, 256), false, 64, MIB), (None, None));
    }
}
