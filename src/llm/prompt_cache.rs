//! The system prompt's KV state on disk, so a restart (a reboot, `serve`
//! coming back, the next `ask`) does not evaluate it again: llama.cpp's
//! `llama_state_seq_save_file`/`load_file` for sequence 0, written once per
//! model, adapter, context settings and prompt tokens.
//!
//! A state is found by a key: the sha256 of the model file's sha256, the
//! adapter and its scale, the context size, the KV cache types and the
//! prompt's tokens (which the chat template and the system prompt decide).
//! Beside each state file, `<key>.sha256` holds the file's own sha256: a
//! file that does not match it (cut short, corrupted, another version's) is
//! ignored with a log line and never reaches llama.cpp's parser. Files are
//! written atomically (temp file, fsync, rename), the check last, so a crash
//! leaves no state that would be trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};

use super::session::Session;
use super::LlmError;

/// Where states live, and what the model is.
#[derive(Debug, Clone)]
pub struct PromptCache {
    dir: PathBuf,
    /// The model file's sha256 (the store's receipt has it).
    model_sha256: String,
}

/// What `Session::warm` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    /// No system prompt (or too short a prefix to be worth a file).
    Nothing,
    /// The state was on disk: `n` tokens loaded instead of evaluated.
    Loaded(usize),
    /// Evaluated now and saved for the next start.
    Saved(usize),
}

/// Shorter prefixes are evaluated faster than a file is read.
const MIN_TOKENS: usize = 16;

impl PromptCache {
    /// States in `dir` (created when missing) for the model whose file has
    /// `model_sha256`.
    ///
    /// # Errors
    /// `dir` cannot be created.
    pub fn new(dir: &Path, model_sha256: &str) -> std::io::Result<PromptCache> {
        std::fs::create_dir_all(dir)?;
        Ok(PromptCache {
            dir: dir.to_path_buf(),
            model_sha256: model_sha256.to_string(),
        })
    }

    fn key(&self, s: &Session<'_>, tokens: &[LlamaToken]) -> String {
        let mut h = Sha256::new();
        h.update(crate::VERSION.as_bytes());
        h.update(self.model_sha256.as_bytes());
        if let Some(a) = s.adapter() {
            h.update(format!("adapter {} {}", a.name, a.scale).as_bytes());
        }
        let (k, v) = s.kv_types();
        h.update(format!("ctx {} kv {k} {v}", s.n_ctx()).as_bytes());
        for t in tokens {
            h.update(t.0.to_le_bytes());
        }
        hex::encode(h.finalize())
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.state")),
            self.dir.join(format!("{key}.sha256")),
        )
    }
}

/// The sha256 of a file, hex.
fn file_sha256(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Session<'_> {
    /// The tokens every conversation of this session starts with: the
    /// chat template's opening and the system prompt (the common prefix
    /// of two conversations that differ only in their question).
    fn standing_prefix(&self) -> Result<Vec<LlamaToken>, LlmError> {
        use super::chat::{Message, Role};
        let Some(system) = self.system() else {
            return Ok(Vec::new());
        };
        let render = |q: &str| -> Result<Vec<LlamaToken>, LlmError> {
            let m = [
                Message::new(Role::System, system.to_string()),
                Message::new(Role::User, q.to_string()),
            ];
            let text = self.engine.template.render(&self.engine.model, &m)?;
            Ok(self.engine.tokenize(&text))
        };
        let (a, b) = (render("A")?, render("Z")?);
        let n = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        Ok(a[..n].to_vec())
    }

    /// Bring the system prompt's KV state in from `cache`, or evaluate it
    /// and save it there. A state that fails its check is ignored (logged)
    /// and replaced; a cache that cannot be written is logged and the
    /// session goes on without it.
    ///
    /// # Errors
    /// Evaluating the prompt failed (`LlmError::Decode`, `PromptTooLong`).
    pub fn warm(&mut self, cache: &PromptCache) -> Result<Warmed, LlmError> {
        let prefix = self.standing_prefix()?;
        if prefix.len() < MIN_TOKENS || prefix.len() + 1 >= self.n_ctx() as usize {
            return Ok(Warmed::Nothing);
        }
        let key = cache.key(self, &prefix);
        let (state, check) = cache.paths(&key);
        if state.exists() {
            match self.load_state(&state, &check, &prefix) {
                Ok(()) => return Ok(Warmed::Loaded(prefix.len())),
                Err(why) => tracing::warn!(
                    file = %state.display(),
                    %why,
                    "prompt cache: ignored a saved state, evaluating the prompt again"
                ),
            }
        }
        self.invalidate_cache();
        self.prefill(&prefix)?;
        if let Err(e) = self.save_state(&state, &check, &prefix) {
            tracing::warn!(dir = %cache.dir.display(), error = %e, "prompt cache: could not save the state");
        }
        Ok(Warmed::Saved(prefix.len()))
    }

    fn load_state(
        &mut self,
        state: &Path,
        check: &Path,
        prefix: &[LlamaToken],
    ) -> Result<(), String> {
        let want = std::fs::read_to_string(check).map_err(|e| format!("no check file: {e}"))?;
        let got = file_sha256(state).map_err(|e| e.to_string())?;
        if want.trim() != got {
            return Err("its sha256 does not match its check file".into());
        }
        self.invalidate_cache();
        let loaded = self
            .ctx
            .state_seq_load_file(state, 0, prefix.len() + 1)
            .map_err(|e| format!("llama.cpp refused it: {e}"));
        match loaded {
            Ok((tokens, _)) if tokens == prefix => {
                self.cached = tokens;
                Ok(())
            }
            other => {
                self.invalidate_cache();
                Err(other
                    .err()
                    .unwrap_or_else(|| "its tokens are not this prompt's".into()))
            }
        }
    }

    fn save_state(&self, state: &Path, check: &Path, prefix: &[LlamaToken]) -> std::io::Result<()> {
        let dir = state.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new().prefix(".state").tempfile_in(dir)?;
        self.ctx
            .state_seq_save_file(tmp.path(), 0, prefix)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tmp.as_file().sync_all()?;
        let sum = file_sha256(tmp.path())?;
        tmp.persist(state).map_err(|e| e.error)?;
        crate::gguf::write_atomic(check, |w| w.write_all(sum.as_bytes()))
    }
}
