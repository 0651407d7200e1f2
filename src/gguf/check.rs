//! What a GGUF must hold to be a language model llama.cpp can run: a known
//! architecture, the hyperparameters and tensors the loader needs, and a
//! tokenizer that does not trip llama.cpp's assertions (`vocab`).

use super::{GgufError, GgufFile};

/// Architectures that the vendored llama.cpp is known to load and that ferrite
/// has been run against or that share the llama graph closely enough.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "gemma",
    "gemma2",
    "gemma3",
    "qwen2",
    "qwen3",
    "phi3",
    "mistral3",
    "granite",
    "olmo",
    "olmo2",
    "stablelm",
    "smollm3",
    "exaone",
    "internlm2",
    "starcoder2",
    "falcon",
];

impl GgufFile {
    /// Check that this is a language model llama.cpp can run: a known
    /// architecture, not an adapter, with the hyperparameters and tensors the
    /// loader needs. This catches files that are valid GGUF but foreign.
    pub fn check_model(&self) -> Result<(), GgufError> {
        let foreign = |what: String| GgufError::Foreign {
            path: self.path.clone(),
            what,
        };
        let arch = self.architecture().ok_or_else(|| {
            foreign("GGUF file has no `general.architecture`: not a model".into())
        })?;
        if self.get_str("general.type") == Some("adapter") {
            return Err(foreign(format!(
                "this is a LoRA adapter for `{arch}`, not a model: pass it with --lora"
            )));
        }
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(foreign(format!(
                "architecture `{arch}` is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        for key in ["block_count", "embedding_length"] {
            if self.get_u64(&format!("{arch}.{key}")).is_none() {
                return Err(foreign(format!(
                    "missing `{arch}.{key}`: not a complete model"
                )));
            }
        }
        if self.get("tokenizer.ggml.tokens").is_none() {
            return Err(foreign(
                "no tokenizer (`tokenizer.ggml.tokens`) in the file".into(),
            ));
        }
        self.check_hparams(arch)?;
        self.check_vocab()?;
        if self.tensor("token_embd.weight").is_none() {
            return Err(foreign(
                "no `token_embd.weight` tensor: not a complete model".into(),
            ));
        }
        Ok(())
    }
}
