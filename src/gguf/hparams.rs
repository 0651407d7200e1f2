//! The model hyperparameters llama.cpp asserts on while loading.
//!
//! `llama_model_base::load_hparams` (`src/llama-model.cpp` in the tree
//! llama-cpp-sys-2 vendors) reads the architecture's keys and checks a few
//! with `GGML_ASSERT`, which aborts the process instead of failing the load:
//! the layer count (1..=`LLAMA_MAX_LAYERS`, 512), the next-token prediction
//! layers (at most the layer count), the expert counts (at most
//! `LLAMA_MAX_EXPERTS`, 1024; experts used at most the experts, groups that
//! divide them), and the RoPE scaling type (a name it knows); and one that
//! ggml asserts when the graph first runs: a norm epsilon ≥ 0. Those are
//! checked here, together with what the graph needs for every architecture
//! ferrite runs, all transformers: at least one attention head, KV heads
//! that divide the heads (grouped-query attention broadcasts one into the
//! other), a non-zero embedding and feed-forward width. Values llama.cpp
//! checks with an exception (wrong types, array lengths, tensor shapes)
//! already fail the load cleanly and are left to it.

use super::{GgufError, GgufFile, Value};

/// `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS` (`src/llama-hparams.h`).
const MAX_LAYERS: u64 = 512;
const MAX_EXPERTS: u64 = 1024;
/// `LLAMA_ROPE_SCALING_TYPES` (`src/llama-model.cpp`).
const ROPE_SCALING: &[&str] = &["none", "linear", "yarn", "longrope"];

impl GgufFile {
    pub(super) fn check_hparams(&self, arch: &str) -> Result<(), GgufError> {
        let bad = |what: String| GgufError::Foreign {
            path: self.path.clone(),
            what: format!("{what}; llama.cpp cannot load this model"),
        };
        let key = |k: &str| format!("{arch}.{k}");
        // A scalar or a per-layer array of unsigned integers (llama.cpp's
        // `get_key_or_arr`); `None` when absent or of another type.
        let values = |k: &str| -> Option<Vec<u64>> {
            match self.get(&key(k))? {
                Value::Array(_, items) => items.iter().map(Value::as_u64).collect(),
                v => v.as_u64().map(|x| vec![x]),
            }
        };
        let scalar = |k: &str| self.get_u64(&key(k));
        let n_layer = scalar("block_count").unwrap_or(0);
        if !(1..=MAX_LAYERS).contains(&n_layer) {
            return Err(bad(format!(
                "`{}` is {n_layer}: it must be from 1 to {MAX_LAYERS}",
                key("block_count")
            )));
        }
        if scalar("nextn_predict_layers").is_some_and(|n| n > n_layer) {
            return Err(bad(format!(
                "`{}` exceeds the layer count",
                key("nextn_predict_layers")
            )));
        }
        if scalar("embedding_length").unwrap_or(0) == 0 {
            return Err(bad(format!("`{}` is 0", key("embedding_length"))));
        }
        let heads = values("attention.head_count").unwrap_or_default();
        if heads.is_empty() || heads.contains(&0) {
            return Err(bad(format!(
                "`{}` must give every layer at least one head",
                key("attention.head_count")
            )));
        }
        if let Some(kv) = values("attention.head_count_kv") {
            let per_layer = |v: &[u64], i: usize| v.get(i).or(v.first()).copied().unwrap_or(0);
            for i in 0..n_layer as usize {
                let (h, k) = (per_layer(&heads, i), per_layer(&kv, i));
                if k == 0 || h % k != 0 {
                    return Err(bad(format!(
                        "layer {i} has {h} attention heads and {k} KV heads: KV heads must divide the heads"
                    )));
                }
            }
        }
        if values("feed_forward_length").is_some_and(|f| f.iter().all(|&x| x == 0)) {
            return Err(bad(format!("`{}` is 0", key("feed_forward_length"))));
        }
        let n_expert = scalar("expert_count").unwrap_or(0);
        let used = values("expert_used_count")
            .unwrap_or_default()
            .into_iter()
            .max()
            .unwrap_or(0);
        let groups = scalar("expert_group_count").unwrap_or(0);
        let group_used = scalar("expert_group_used_count").unwrap_or(0);
        let experts_ok = n_expert <= MAX_EXPERTS
            && used <= n_expert
            && if n_expert > 0 {
                used > 0
                    && groups < n_expert
                    && (groups <= 1
                        || (n_expert % groups == 0 && group_used > 0 && group_used < groups))
            } else {
                used == 0 && groups == 0
            };
        if !experts_ok {
            return Err(bad(format!(
                "inconsistent experts: {n_expert} experts, {used} used, {groups} groups ({group_used} used)"
            )));
        }
        // ggml's norms assert `eps >= 0` (`ggml-cpu/ops.cpp`) when the graph
        // first runs.
        for k in [
            "attention.layer_norm_rms_epsilon",
            "attention.layer_norm_epsilon",
        ] {
            if let Some(v) = self.get(&key(k)) {
                if !v.as_f32().is_some_and(|e| e.is_finite() && e >= 0.0) {
                    return Err(bad(format!("`{}` is {v}: it must be a number ≥ 0", key(k))));
                }
            }
        }
        if let Some(v) = self.get(&key("rope.scaling.type")) {
            if !v.as_str().is_some_and(|s| ROPE_SCALING.contains(&s)) {
                return Err(bad(format!(
                    "`{}` is {v}, not one of {}",
                    key("rope.scaling.type"),
                    ROPE_SCALING.join(", ")
                )));
            }
        }
        Ok(())
    }
}
