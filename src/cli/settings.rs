//! Settings resolved once, before any command runs: the board profile
//! (`--board`/`FERRITE_BOARD`), the manifest, the model store, and what the
//! command line leaves to them (model, threads, context, GPU layers). This
//! is the one place the environment is read (besides `FERRITE_LOG` for the
//! log filter and systemd's variables in `service`):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `FERRITE_HOME` | the model store (else the profile's `store_dir` if writable, else `$XDG_DATA_HOME/ferrite` or `~/.local/share/ferrite`) |
//! | `FERRITE_BOARD` | the board profile (`--board`; default `auto`: detected) |
//! | `FERRITE_MANIFEST` | a manifest file instead of the built-in `models/models.toml` |
//! | `FERRITE_PYTHON` | the Python whose pip fetches models (`python3`) |

use std::path::{Path, PathBuf};

use ferrite::board::{self, Board};
use ferrite::gguf::GgufFile;
use ferrite::llm::{self, Engine, LoadOptions, SessionOptions};
use ferrite::models::{Manifest, Store};

use super::args::{DraftArgs, GenArgs, ModelArgs, SpeechArgs, VoiceArgs};

pub(crate) struct Ctx {
    pub(crate) board: Board,
    pub(crate) manifest: Manifest,
    pub(crate) store: Store,
    /// Why the store is where it is (`StoreRoot::origin`).
    pub(crate) store_origin: String,
}

/// Where the model store is, and why there (shown by `models list` and in
/// errors, so a user knows which setting to change).
pub(crate) struct StoreRoot {
    pub(crate) path: PathBuf,
    pub(crate) origin: String,
}

/// The store's root: `FERRITE_HOME`, else the board profile's `store_dir`
/// when this user can write there (it is the service's store, made by the
/// `.deb` or the install steps; never created here), else
/// `$XDG_DATA_HOME/ferrite`, else `~/.local/share/ferrite`.
pub(crate) fn store_root(board: &Board) -> StoreRoot {
    if let Some(h) = std::env::var_os("FERRITE_HOME") {
        return StoreRoot {
            path: PathBuf::from(h),
            origin: "FERRITE_HOME".into(),
        };
    }
    if let Some(dir) = &board.store_dir {
        if tempfile::tempfile_in(dir).is_ok() {
            return StoreRoot {
                path: dir.clone(),
                origin: format!("board profile {}'s store_dir", board.name),
            };
        }
        tracing::info!(
            store_dir = %dir.display(),
            board = %board.name,
            "the profile's store (the service's) is not writable by this user: using your own; set FERRITE_HOME to choose"
        );
    }
    let (base, origin) = match std::env::var_os("XDG_DATA_HOME") {
        Some(x) => (PathBuf::from(x), "XDG_DATA_HOME"),
        None => (
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".local/share"))
                .unwrap_or_else(|| PathBuf::from(".")),
            "the default for this user",
        ),
    };
    StoreRoot {
        path: base.join("ferrite"),
        origin: origin.into(),
    }
}

/// A permission error on a file in the model store says which store it is,
/// why it is there, and how to choose another: the fix a user needs, which
/// the bare "Permission denied" does not give.
pub(crate) fn store_hint(e: anyhow::Error, ctx: &Ctx) -> anyhow::Error {
    let root = ctx.store.root();
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    let in_store = e
        .chain()
        .any(|c| c.to_string().contains(&*root.to_string_lossy()));
    if denied && in_store {
        e.context(format!(
            "the model store is {} ({}); this user cannot write there: set FERRITE_HOME to a folder you own, or run as the store's owner (the service's: sudo -u ferrite)",
            root.display(),
            ctx.store_origin
        ))
    } else {
        e
    }
}

/// The board profile `--board` names: `auto` is the one `board detect`
/// finds on this machine (`host` where it finds no known board).
pub(crate) fn load_board(spec: &str) -> anyhow::Result<Board> {
    if spec == "auto" {
        let found = board::detect(Path::new("/"));
        tracing::info!(board = found.profile, "board detected");
        return Ok(Board::load(found.profile)?);
    }
    Ok(Board::load(spec)?)
}

impl Ctx {
    pub(crate) fn new(board: &str) -> anyhow::Result<Ctx> {
        let board = load_board(board)?;
        let manifest_path = std::env::var_os("FERRITE_MANIFEST").map(PathBuf::from);
        let manifest = Manifest::load(manifest_path.as_deref())?;
        let root = store_root(&board);
        let store = Store::new(root.path.clone())
            .with_python(std::env::var("FERRITE_PYTHON").unwrap_or_else(|_| "python3".into()))
            .with_converter(ferrite::speech::converter())
            .with_progress(Box::new(super::progress::Bars::default()));
        Ok(Ctx {
            board,
            manifest,
            store,
            store_origin: root.origin,
        })
    }

    pub(crate) fn resolve(&self, spec: Option<&str>) -> anyhow::Result<(String, PathBuf)> {
        let spec = spec.or(self.board.default_model.as_deref());
        Ok(self.store.resolve_llm(spec, &self.manifest, true)?)
    }

    pub(crate) fn load(&self, m: &ModelArgs) -> anyhow::Result<Engine> {
        self.load_beside(m, None)
    }

    /// `load`, with `beside` (the estimate of a model already loaded, which
    /// this one drafts for) counted against the memory first.
    fn load_beside(
        &self,
        m: &ModelArgs,
        beside: Option<board::MemoryEstimate>,
    ) -> anyhow::Result<Engine> {
        let (name, path) = self.resolve(m.model.as_deref())?;
        let opts = self.session_opts(m, 0);
        let load = self.load_opts(m);
        let gguf = GgufFile::open(&path)?;
        board::check_fits_pooled(
            &self.board,
            &gguf,
            (opts.ctx_tokens, opts.batch_tokens, opts.kv),
            Path::new("/"),
            beside,
            ferrite::rpc::pooled_free(&load.rpc)?,
        )?;
        let engine = Engine::from_gguf(&name, gguf, &load)?;
        if let Some(c) = m.ctx_size {
            engine.check_ctx(c)?;
        }
        Ok(engine)
    }

    /// The `--draft` model, loaded (and pulled when missing) like the
    /// model itself; `None` without `--draft`.
    pub(crate) fn load_draft(
        &self,
        d: &DraftArgs,
        m: &ModelArgs,
    ) -> anyhow::Result<Option<Engine>> {
        let Some(spec) = &d.draft else {
            return Ok(None);
        };
        d.options().validate()?;
        // The draft model runs here: its point is to be fast next to the
        // model it drafts for, not to hold layers on another board.
        let args = ModelArgs {
            model: Some(spec.clone()),
            rpc: super::args::RpcArgs {
                rpc: Some(super::args::RpcList::default()),
                tensor_split: Vec::new(),
            },
            ..m.clone()
        };
        // The model it drafts for is loaded: count it first.
        let (_, target) = self.resolve(m.model.as_deref())?;
        let opts = self.session_opts(m, 0);
        let beside = board::estimate(
            &GgufFile::open(&target)?,
            opts.ctx_tokens,
            opts.batch_tokens,
            opts.kv,
        );
        Ok(Some(anyhow::Context::context(
            self.load_beside(&args, Some(beside)),
            "the draft model",
        )?))
    }

    /// The drafter `--draft`/`--lookup` ask for, on `draft` (loaded by
    /// `load_draft`) for `target`'s sessions of `sopts`.
    pub(crate) fn drafter<'m>(
        d: &DraftArgs,
        target: &Engine,
        draft: Option<&'m Engine>,
        sopts: &SessionOptions,
    ) -> anyhow::Result<Option<(llm::Drafter<'m>, llm::DraftOptions)>> {
        if draft.is_none() && !d.lookup {
            return Ok(None);
        }
        Ok(Some((
            llm::Drafter::new(target, draft, sopts)?,
            d.options(),
        )))
    }

    /// Load `--lora NAME|PATH[:SCALE]` into the engine, checked against it.
    pub(crate) fn load_lora(
        &self,
        engine: &mut Engine,
        spec: &str,
    ) -> anyhow::Result<(llm::AdapterId, f32)> {
        let (spec, scale) = llm::parse_adapter_spec(spec)?;
        let (name, path) = self.store.resolve_adapter(&spec, true)?;
        let sha = self.store.model_sha256(engine.name(), engine.path())?;
        let id = engine.load_adapter(&name, &path, Some(&sha))?;
        Ok((id, scale))
    }

    /// Load the whisper model `--whisper` names (pulling it when missing).
    pub(crate) fn transcriber(
        &self,
        a: &SpeechArgs,
    ) -> anyhow::Result<ferrite::speech::Transcriber> {
        let (_, path) = self.store.resolve(Some(&a.whisper), &self.manifest, true)?;
        let threads = a
            .stt_threads
            .map_or_else(|| self.board.threads() as usize, |t| t as usize);
        Ok(
            ferrite::speech::Transcriber::load(&path, threads, &a.language)?
                .fit_audio_ctx(a.audio_ctx == "fit"),
        )
    }

    /// The voice `--voice` names: `espeak[:VOICE]` (no download), or a
    /// Piper voice with ONNX Runtime for this machine, both pulled on first
    /// use.
    pub(crate) fn voice(&self, a: &VoiceArgs) -> anyhow::Result<Box<dyn ferrite::tts::Voice>> {
        if a.voice == "espeak" || a.voice.starts_with("espeak:") {
            let name = a.voice.strip_prefix("espeak:").unwrap_or("en-us");
            return Ok(Box::new(ferrite::tts::fallback::EspeakVoice::new(name)?));
        }
        let runtime = ferrite::tts::runtime::model_name();
        if self.manifest.get(&runtime).is_none() {
            anyhow::bail!(
                "Piper voices need ONNX Runtime, which has no build for {} (a 32-bit OS?); use `--voice espeak`, or a 64-bit OS",
                std::env::consts::ARCH
            );
        }
        let (_, rt) = self.store.resolve(
            Some(&ferrite::tts::runtime::model_name()),
            &self.manifest,
            true,
        )?;
        ferrite::tts::runtime::init(&rt)?;
        let (_, onnx) = self.store.resolve(Some(&a.voice), &self.manifest, true)?;
        let threads = a
            .tts_threads
            .map_or_else(|| self.board.threads() as usize, |t| t as usize);
        Ok(Box::new(ferrite::tts::PiperVoice::load(&onnx, threads)?))
    }

    /// The Silero gate `--vad-model` names, pulled on first use; `none`, or
    /// a pull that fails (an offline board without it), leaves the spectral
    /// detector alone, said once on stderr.
    pub(crate) fn speech_gate(
        &self,
        a: &SpeechArgs,
    ) -> anyhow::Result<Option<ferrite::speech::neural_vad::Gate>> {
        if a.vad_model == "none" {
            return Ok(None);
        }
        let path = match self.store.resolve(Some(&a.vad_model), &self.manifest, true) {
            Ok((_, p)) => p,
            Err(e) if a.vad_model == "silero-vad" => {
                tracing::warn!(
                    "{}: the learned voice detector is not available, so the spectral detector alone decides what is speech",
                    ferrite::report(&e)
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let vad = ferrite::speech::neural_vad::SileroVad::load(&path, 1)?;
        Ok(Some(ferrite::speech::neural_vad::Gate::new(vad)))
    }

    /// What the assistant core runs with, from the flags `chat`, `serve` and
    /// `listen` share; the console's own settings (echo, JSON, line limit)
    /// start off and at chat's 1 MiB, for `serve` to set from its flags.
    pub(crate) fn serve_options(
        &self,
        lora: Option<String>,
        m: &ModelArgs,
        gen: &GenArgs,
        draft: &DraftArgs,
        system: Option<String>,
    ) -> anyhow::Result<ferrite::assistant::ServeOptions> {
        draft.options().validate()?;
        let draft = match (&draft.draft, draft.lookup) {
            (Some(spec), _) => Some(ferrite::assistant::DraftSetting {
                model: Some(self.resolve(Some(spec))?),
                opts: draft.options(),
            }),
            (None, true) => Some(ferrite::assistant::DraftSetting {
                model: None,
                opts: draft.options(),
            }),
            (None, false) => None,
        };
        Ok(ferrite::assistant::ServeOptions {
            lora,
            model: m.model.clone().or(self.board.default_model.clone()),
            load: self.load_opts(m),
            session: self.session_opts(m, gen.beams as usize),
            params: gen.params()?,
            system,
            echo: false,
            json: false,
            max_line_bytes: 1 << 20,
            board: self.board.clone(),
            sys_root: ferrite::assistant::default_sys_root(),
            draft,
            prompt_cache: false,
        })
    }

    pub(crate) fn load_opts(&self, m: &ModelArgs) -> LoadOptions {
        let rpc = match &m.rpc.rpc {
            Some(list) => list.0.clone(),
            None => self.board.rpc_endpoints(),
        };
        LoadOptions {
            gpu_layers: m.gpu_layers.unwrap_or(self.board.gpu_layers),
            rpc,
            tensor_split: m.rpc.tensor_split.clone(),
            local_bytes: board::memory_limit(&self.board, Path::new("/"), 0).map(|(b, _)| b),
            ..Default::default()
        }
    }

    pub(crate) fn session_opts(&self, m: &ModelArgs, beams: usize) -> SessionOptions {
        SessionOptions {
            ctx_tokens: m.ctx_size.unwrap_or(self.board.ctx_tokens),
            threads: m.threads.unwrap_or_else(|| self.board.threads()),
            max_beams: beams,
            kv: (
                m.cache_type_k.unwrap_or(self.board.kv_type),
                m.cache_type_v.unwrap_or(self.board.kv_type),
            ),
            ..SessionOptions::default()
        }
    }
}
