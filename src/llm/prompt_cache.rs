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

use llama_cpp_2::context::LlamaContext;

use super::adapters::ActiveAdapter;
use super::session::Session;
use super::{Engine, LlmError};
use crate::board::KvType;

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
pub(crate) const MIN_TOKENS: usize = 16;

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

    /// The key of the state of `tokens` evaluated in a context that
    /// `label` describes (adapter, size, cache types: `context_label`).
    pub(crate) fn key(&self, label: &str, tokens: &[LlamaToken]) -> String {
        let mut h = Sha256::new();
        h.update(crate::VERSION.as_bytes());
        h.update(self.model_sha256.as_bytes());
        h.update(label.as_bytes());
        for t in tokens {
            h.update(t.0.to_le_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The state file and its check file for `key`.
    pub(crate) fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.state")),
            self.dir.join(format!("{key}.sha256")),
        )
    }
}

/// What a state depends on besides the model and the tokens: the adapter
/// `engine` has applied as `active` (its name, scale, and its file's size
/// and modification time, so a retrained adapter under the same name is
/// another key), the context's size and its KV cache types.
pub(crate) fn context_label(
    engine: &Engine,
    active: Option<&ActiveAdapter>,
    n_ctx: u32,
    (k, v): (KvType, KvType),
) -> String {
    let mut label = format!("ctx {n_ctx} kv {k} {v}");
    if let Some((name, path, scale)) = engine.adapter_file(active) {
        let stamp = std::fs::metadata(&path).ok().map(|m| {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            (m.len(), t.map_or(0, |d| d.as_nanos()))
        });
        label.push_str(&format!(
            " adapter {name} {} {scale} {stamp:?}",
            path.display()
        ));
    }
    label
}

/// Load sequence `seq`'s state for exactly `tokens` from `state` into
/// `ctx`, after checking the file against its `check` sum. The sequence's
/// cells are emptied first, and again when llama.cpp refuses the file or
/// it holds other tokens. `Err` says why, for the log.
pub(crate) fn load_seq(
    ctx: &mut LlamaContext<'_>,
    seq: i32,
    (state, check): (&Path, &Path),
    tokens: &[LlamaToken],
) -> Result<(), String> {
    let want = std::fs::read_to_string(check).map_err(|e| format!("no check file: {e}"))?;
    let got = file_sha256(state).map_err(|e| e.to_string())?;
    if want.trim() != got {
        return Err("its sha256 does not match its check file".into());
    }
    let _ = ctx.kv_cache_seq_rm(seq, None, None);
    let loaded = ctx
        .state_seq_load_file(state, seq, tokens.len() + 1)
        .map_err(|e| format!("llama.cpp refused it: {e}"));
    match loaded {
        Ok((got, _)) if got == tokens => Ok(()),
        other => {
            let _ = ctx.kv_cache_seq_rm(seq, None, None);
            Err(other
                .err()
                .unwrap_or_else(|| "its tokens are not this prompt's".into()))
        }
    }
}

/// Save sequence `seq` (whose cells hold exactly `tokens`) to `state`
/// atomically, then its sum to `check` (last, so a crash leaves nothing
/// that would be trusted).
///
/// # Errors
/// The directory cannot be written, or llama.cpp could not save.
pub(crate) fn save_seq(
    ctx: &LlamaContext<'_>,
    seq: i32,
    (state, check): (&Path, &Path),
    tokens: &[LlamaToken],
) -> std::io::Result<()> {
    let dir = state.parent().unwrap_or(Path::new("."));
    // 0644 as every file in the store (one prepared with sudo stays
    // readable by the service's user); tempfile's default is 0600.
    let tmp = tempfile::Builder::new()
        .prefix(".state")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
    ctx.state_seq_save_file(tmp.path(), seq, tokens)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tmp.as_file().sync_all()?;
    let sum = file_sha256(tmp.path())?;
    tmp.persist(state).map_err(|e| e.error)?;
    crate::gguf::write_atomic(check, |w| w.write_all(sum.as_bytes()))
}

/// The tokens every chat with `system` as its system prompt starts with:
/// the chat template's opening and the system message (the common prefix
/// of two chats that differ only in their question).
///
/// # Errors
/// The template cannot be rendered.
pub fn standing_prefix(engine: &Engine, system: &str) -> Result<Vec<LlamaToken>, LlmError> {
    use super::chat::{Message, Role};
    let render = |q: &str| -> Result<Vec<LlamaToken>, LlmError> {
        let m = [
            Message::new(Role::System, system.to_string()),
            Message::new(Role::User, q.to_string()),
        ];
        Ok(engine.tokenize(&engine.render_chat(&m, true)?))
    };
    let (a, b) = (render("A")?, render("Z")?);
    let n = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    Ok(a[..n].to_vec())
}

/// The sha256 of a file, hex.
fn file_sha256(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Session<'_> {
    /// Bring the system prompt's KV state in from `cache`, or evaluate it
    /// and save it there. A state that fails its check is ignored (logged)
    /// and replaced; a cache that cannot be written is logged and the
    /// session goes on without it.
    ///
    /// # Errors
    /// Evaluating the prompt failed (`LlmError::Decode`, `PromptTooLong`).
    pub fn warm(&mut self, cache: &PromptCache) -> Result<Warmed, LlmError> {
        let prefix = match self.system() {
            Some(system) => standing_prefix(self.engine, system)?,
            None => Vec::new(),
        };
        if prefix.len() < MIN_TOKENS || prefix.len() + 1 >= self.n_ctx() as usize {
            return Ok(Warmed::Nothing);
        }
        let label = context_label(self.engine, self.adapter(), self.n_ctx(), self.kv_types());
        let key = cache.key(&label, &prefix);
        let (state, check) = cache.paths(&key);
        if state.exists() {
            self.invalidate_cache();
            match load_seq(&mut self.ctx, 0, (&state, &check), &prefix) {
                Ok(()) => {
                    self.cached = prefix.clone();
                    return Ok(Warmed::Loaded(prefix.len()));
                }
                Err(why) => tracing::warn!(
                    file = %state.display(),
                    %why,
                    "prompt cache: ignored a saved state, evaluating the prompt again"
                ),
            }
        }
        self.invalidate_cache();
        self.prefill(&prefix)?;
        if let Err(e) = save_seq(&self.ctx, 0, (&state, &check), &prefix) {
            tracing::warn!(dir = %cache.dir.display(), error = %e, "prompt cache: could not save the state");
        }
        Ok(Warmed::Saved(prefix.len()))
    }
}
