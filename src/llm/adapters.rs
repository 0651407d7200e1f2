//! LoRA adapters at run time: validated (`crate::adapter`) before llama.cpp
//! reads them, loaded once per engine and kept (llama.cpp ties an adapter's
//! tensors to its model), then switched per context without reloading the
//! model. Every switch empties the KV cache, because cached keys and values
//! were computed with the old weights.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use llama_cpp_2::model::LlamaLoraAdapter;

use super::{Engine, LlmError, Session};
use crate::gguf::GgufFile;

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
pub struct AdapterId(usize);

/// The adapter a session is using.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAdapter {
    pub id: AdapterId,
    pub name: String,
    pub scale: f32,
}

impl Engine {
    /// Validate `path` against this model (architecture, base sha256,
    /// tensor shapes) and load it, or return the id of the copy already
    /// loaded. `base_sha256` is this model's file hash, when known.
    pub fn load_adapter(
        &mut self,
        name: &str,
        path: &Path,
        base_sha256: Option<&str>,
    ) -> Result<AdapterId, LlmError> {
        {
            let list = self.adapters.0.lock().expect("adapter list");
            if let Some(i) = list.iter().position(|a| a.path == path) {
                return Ok(AdapterId(i));
            }
        }
        let base = GgufFile::open(self.path())?;
        let info = crate::adapter::check_against(path, &base, base_sha256)?;
        drop(base);
        let handle = self.model.lora_adapter_init(path).map_err(|e| {
            LlmError::Adapter(format!(
                "{}: llama.cpp refused the adapter ({e}); run with -v to see its log",
                path.display()
            ))
        })?;
        tracing::info!(adapter = %name, rank = info.rank, alpha = info.alpha, "adapter loaded");
        let mut list = self.adapters.0.lock().expect("adapter list");
        list.push(Loaded {
            name: name.to_string(),
            path: path.to_path_buf(),
            handle,
        });
        Ok(AdapterId(list.len() - 1))
    }

    /// The id of an adapter already loaded under `name`.
    pub fn adapter_by_name(&self, name: &str) -> Option<AdapterId> {
        let list = self.adapters.0.lock().expect("adapter list");
        list.iter().position(|a| a.name == name).map(AdapterId)
    }
}

impl Session<'_> {
    /// Apply a loaded adapter at `scale` (or none), emptying the KV cache;
    /// the conversation is kept and re-evaluated with the new weights.
    pub fn set_adapter(&mut self, adapter: Option<(AdapterId, f32)>) -> Result<(), LlmError> {
        if !adapter.is_none_or(|(_, s)| s.is_finite()) {
            return Err(LlmError::Param(
                "adapter scale must be a finite number".into(),
            ));
        }
        let mut list = self.engine.adapters.0.lock().expect("adapter list");
        match adapter {
            Some((id, scale)) => {
                let a = list
                    .get_mut(id.0)
                    .ok_or_else(|| LlmError::Adapter("no such adapter loaded".into()))?;
                self.ctx
                    .lora_adapter_set(&mut a.handle, scale)
                    .map_err(|e| LlmError::Adapter(e.to_string()))?;
                self.adapter = Some(ActiveAdapter {
                    id,
                    name: a.name.clone(),
                    scale,
                });
            }
            None => {
                if let Some(a) = list.first_mut() {
                    self.ctx
                        .lora_adapter_remove(&mut a.handle)
                        .map_err(|e| LlmError::Adapter(e.to_string()))?;
                }
                self.adapter = None;
            }
        }
        drop(list);
        self.invalidate_cache();
        Ok(())
    }

    pub fn adapter(&self) -> Option<&ActiveAdapter> {
        self.adapter.as_ref()
    }

    /// llama.cpp's logits at every position of `tokens`, evaluated from an
    /// empty cache with the current adapter (tests hold them against the
    /// trainer's forward pass). The cache is left empty.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, LlmError> {
        use llama_cpp_2::llama_batch::LlamaBatch;
        use llama_cpp_2::token::LlamaToken;
        if tokens.len() > self.n_ctx() as usize || tokens.len() > self.opts_batch() {
            return Err(LlmError::PromptTooLong {
                needed: tokens.len(),
                ctx_tokens: self.n_ctx(),
            });
        }
        self.invalidate_cache();
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), i as i32, &[0], true)
                .map_err(|e| LlmError::Decode(e.to_string()))?;
        }
        self.ctx
            .decode(&mut batch)
            .map_err(|e| LlmError::Decode(e.to_string()))?;
        let out = (0..tokens.len())
            .map(|i| self.ctx.get_logits_ith(i as i32).to_vec())
            .collect();
        self.invalidate_cache();
        Ok(out)
    }
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
    }
    Ok((spec.to_string(), 1.0))
}
