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
        let h = Hparams { g: self, arch };
        let check = || -> Result<(), String> {
            h.layers_and_heads()?;
            h.experts()?;
            h.norms_and_rope()
        };
        check().map_err(|what| GgufError::Foreign {
            path: self.path.clone(),
            what: format!("{what}; llama.cpp cannot load this model"),
        })
    }
}

/// The `ARCH.*` keys of one file.
struct Hparams<'g> {
    g: &'g GgufFile,
    arch: &'g str,
}

impl Hparams<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn scalar(&self, k: &str) -> Option<u64> {
        self.g.get_u64(&self.key(k))
    }

    /// A scalar or a per-layer array of unsigned integers (llama.cpp's
    /// `get_key_or_arr`); `None` when absent or of another type.
    fn values(&self, k: &str) -> Option<Vec<u64>> {
        match self.g.get(&self.key(k))? {
            Value::Array(_, items) => items.iter().map(Value::as_u64).collect(),
            v => v.as_u64().map(|x| vec![x]),
        }
    }

    /// The layer count, widths and attention heads.
    fn layers_and_heads(&self) -> Result<(), String> {
        let n_layer = self.scalar("block_count").unwrap_or(0);
        if !(1..=MAX_LAYERS).contains(&n_layer) {
            return Err(format!(
                "`{}` is {n_layer}: it must be from 1 to {MAX_LAYERS}",
                self.key("block_count")
            ));
        }
        if self
            .scalar("nextn_predict_layers")
            .is_some_and(|n| n > n_layer)
        {
            return Err(format!(
                "`{}` exceeds the layer count",
                self.key("nextn_predict_layers")
            ));
        }
        if self.scalar("embedding_length").unwrap_or(0) == 0 {
            return Err(format!("`{}` is 0", self.key("embedding_length")));
        }
        let heads = self.values("attention.head_count").unwrap_or_default();
        if heads.is_empty() || heads.contains(&0) {
            return Err(format!(
                "`{}` must give every layer at least one head",
                self.key("attention.head_count")
            ));
        }
        if let Some(kv) = self.values("attention.head_count_kv") {
            let per_layer = |v: &[u64], i: usize| v.get(i).or(v.first()).copied().unwrap_or(0);
            for i in 0..n_layer as usize {
                let (h, k) = (per_layer(&heads, i), per_layer(&kv, i));
                if k == 0 || h % k != 0 {
                    return Err(format!(
                        "layer {i} has {h} attention heads and {k} KV heads: KV heads must divide the heads"
                    ));
                }
            }
        }
        if self
            .values("feed_forward_length")
            .is_some_and(|f| f.iter().all(|&x| x == 0))
        {
            return Err(format!("`{}` is 0", self.key("feed_forward_length")));
        }
        Ok(())
    }

    /// Expert counts as `load_hparams` asserts them.
    fn experts(&self) -> Result<(), String> {
        let n_expert = self.scalar("expert_count").unwrap_or(0);
        let used = self
            .values("expert_used_count")
            .unwrap_or_default()
            .into_iter()
            .max()
            .unwrap_or(0);
        let groups = self.scalar("expert_group_count").unwrap_or(0);
        let group_used = self.scalar("expert_group_used_count").unwrap_or(0);
        let ok = n_expert <= MAX_EXPERTS
            && used <= n_expert
            && if n_expert > 0 {
                used > 0
                    && groups < n_expert
                    && (groups <= 1
                        || (n_expert.is_multiple_of(groups)
                            && group_used > 0
                            && group_used < groups))
            } else {
                used == 0 && groups == 0
            };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "inconsistent experts: {n_expert} experts, {used} used, {groups} groups ({group_used} used)"
            ))
        }
    }

    /// Norm epsilons (ggml's norms assert `eps >= 0`, `ggml-cpu/ops.cpp`,
    /// when the graph first runs) and the RoPE scaling type.
    fn norms_and_rope(&self) -> Result<(), String> {
        for k in [
            "attention.layer_norm_rms_epsilon",
            "attention.layer_norm_epsilon",
        ] {
            if let Some(v) = self.g.get(&self.key(k)) {
                if !v.as_f32().is_some_and(|e| e.is_finite() && e >= 0.0) {
                    return Err(format!("`{}` is {v}: it must be a number ≥ 0", self.key(k)));
                }
            }
        }
        if let Some(v) = self.g.get(&self.key("rope.scaling.type")) {
            if !v.as_str().is_some_and(|s| ROPE_SCALING.contains(&s)) {
                return Err(format!(
                    "`{}` is {v}, not one of {}",
                    self.key("rope.scaling.type"),
                    ROPE_SCALING.join(", ")
                ));
            }
        }
        Ok(())
    }
}
