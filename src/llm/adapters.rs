//! LoRA adapters at run time: validated (`crate::adapter`) before llama.cpp
//! reads them, loaded once per engine and kept (llama.cpp ties an adapter's
//! tensors to its model), then switched per context without reloading the
//! model. Every switch empties the KV cache, because cached keys and values
//! were computed with the old weights.

use std::path::PathBuf;
use std::sync::Mutex;

use llama_cpp_2::model::LlamaLoraAdapter;

use super::LlmError;

/// An adapter loaded into an engine.
pub(crate) struct Loaded {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) handle: LlamaLoraAdapter,
}

/// The adapters an engine has loaded; ids index into it.
#[derive(Default)]
pub(crate) struct Adapters(pub(crate) Mutex<Vec<Loaded>>);

/// A loaded adapter, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterId(pub(crate) usize);

/// The adapter a session is using.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAdapter {
    pub id: AdapterId,
    pub name: String,
    pub scale: f32,
}

/// Split `NAME|PATH[:SCALE]` into the adapter and its scale (default 1).
pub fn parse_adapter_spec(spec: &str) -> Result<(String, f32), LlmError> {
    if let Some((head, tail)) = spec.rsplit_once(':') {
        if let Ok(s) = tail.parse::<f32>() {
            if !s.is_finite() {
                return Err(LlmError::Param(format!(
                    "adapter scale `{tail}` is not finite"
                )));
            }
            return Ok((head.to_string(), s));
        }
        // Store names hold no `:`: unless a file has this very name, the
        // part after it was meant as a scale.
        if !std::path::Path::new(spec).exists() {
            return Err(LlmError::Param(format!(
                "adapter scale `{tail}` is not a number (NAME:SCALE, e.g. {head}:0.5)"
            )));
        }
    }
    Ok((spec.to_string(), 1.0))
}
