//! The serial console front end behind `ferrite serve` and `listen`: lines
//! arrive from a console link, are edited and parsed into requests for the
//! core, and the core's events go back rendered as text or JSON lines.
//!
//! The loop owns the link and the model: the link comes from a `Connector`
//! (serial port, pseudo-terminal, stdio) and may vanish and come back, in
//! which case the loop waits, reopens it and starts a new conversation; a
//! `/model` switch or an adapter load reloads the engine between
//! conversations. With the HTTP API beside the console, its worker answers
//! on the same engine (its own context) during the conversations and stops
//! while the engine is reloaded or takes an adapter. While an answer streams, the loop keeps reading the link
//! so that Ctrl-C (or BREAK, which a raw serial line delivers as NUL, or
//! `{"cmd":"cancel"}` in JSON mode) cancels within one token; anything else
//! typed meanwhile is kept, bounded, as type-ahead.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use super::commands::Command;
use super::core::{check_switchable, Carry, Core, Outcome};
use super::event::Event;
use super::protocol::{parse_json_line, Request};
use super::{render, AssistantError, Ear, ServeOptions, Service};
use crate::board::Governor;
use crate::console::line::{self, LineEditor};
use crate::console::{self, Channels, Connector, Input};
use crate::gguf::GgufFile;
use crate::http::{Api, Served};
use crate::hw::Status;
use crate::llm::{AdapterId, Engine};
use crate::models::{Manifest, Store};
use crate::speech::listen::Heard;
use crate::tts::sentences::Splitter;

/// Bytes typed during an answer that are kept for afterwards.
const MAX_TYPE_AHEAD: usize = 64 * 1024;
const CTRL_C: u8 = 0x03;
/// A BREAK on a raw serial line reads as NUL.
const BREAK: u8 = 0x00;

/// How one conversation ended.
enum End {
    /// The link is gone (unplugged, closed).
    LinkLost,
    /// stdin reached its end.
    InputEnded,
    /// `/quit`.
    Quit,
    /// The service is stopping (SIGTERM).
    Stopping,
    /// `/model NAME`, with the input already read after its line.
    Switch(String, PathBuf, Vec<u8>),
    /// `/lora use NAME` for an adapter not loaded yet: the engine loads it
    /// between conversations, then the conversation continues.
    Adapter {
        name: String,
        path: PathBuf,
        scale: f32,
        carry: Box<Carry>,
        pending: Vec<u8>,
    },
}

/// How the next conversation starts.
enum Resume {
    /// A fresh conversation with a banner, after this input.
    Fresh(Vec<u8>),
    /// The conversation goes on after an adapter load, with what to say.
    Carried {
        carry: Box<Carry>,
        adapter: Option<(AdapterId, f32)>,
        said: Event,
        pending: Vec<u8>,
    },
}

/// Open the link, waiting for it to appear when the connector reopens.
/// Open the console, waiting for it while it is missing. `Ok(None)`: the
/// service is stopping.
fn connect(
    connector: &mut dyn Connector,
    service: &dyn Service,
) -> Result<Option<Channels>, AssistantError> {
    let mut warned = false;
    loop {
        service.heartbeat();
        if service.stopping() {
            return Ok(None);
        }
        match connector.open() {
            Ok(link) => {
                let port = connector.describe();
                if warned {
                    // At the level of the loss, so a log that shows one shows both.
                    tracing::warn!(%port, "console available again: serving on it");
                } else {
                    tracing::info!(%port, "console open");
                }
                service.status(&format!("serving on {port}"));
                return Ok(Some(console::start(link)));
            }
            Err(e) if connector.reopens() && e.kind() != std::io::ErrorKind::InvalidInput => {
                if !warned {
                    let port = connector.describe();
                    tracing::warn!(%port, error = %e, "console not available; waiting for it");
                    service.status(&format!("waiting for {port} ({e})"));
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(source) => {
                return Err(AssistantError::Link {
                    what: connector.describe(),
                    source,
                })
            }
        }
    }
}

/// Validate `path` (GGUF, a model llama.cpp can run), check it fits the
/// board's memory, and load it: what a `/model` switch does once the core
/// has let the running model go.
///
/// A model split across boards (`--rpc`) whose servers do not answer is
/// loaded on this board alone when it fits here, and otherwise waited for:
/// tried again every `RPC_RETRY` until they answer. The console stays up
/// either way; only the model's placement changes.
pub fn load_engine(opts: &ServeOptions, name: &str, path: &Path) -> Result<Engine, AssistantError> {
    let mut waiting = false;
    loop {
        let split = check_switchable(opts, path)
            .and_then(|gguf| Ok(Engine::from_gguf(name, gguf, &opts.load)?));
        let e = match split {
            Err(e) if remote_unavailable(&e) => e,
            other => return other,
        };
        let mut alone = opts.clone();
        alone.load.rpc.clear();
        alone.load.tensor_split.clear();
        let fits = check_switchable(&alone, path);
        if let Ok(gguf) = fits {
            tracing::warn!(model = %name, error = %crate::report(&e), "the --rpc servers do not answer: running on this board alone");
            return Ok(Engine::from_gguf(name, gguf, &alone.load)?);
        }
        if !waiting {
            tracing::warn!(model = %name, error = %crate::report(&e), retry_s = RPC_RETRY.as_secs(), "the --rpc servers do not answer and the model does not fit here alone: waiting for them");
            waiting = true;
        }
        std::thread::sleep(RPC_RETRY);
    }
}

/// How often `load_engine` tries `--rpc` servers that did not answer.
const RPC_RETRY: Duration = Duration::from_secs(5);

/// Whether `e` says an `--rpc` server is gone (not that the model is bad).
fn remote_unavailable(e: &AssistantError) -> bool {
    use crate::rpc::RpcError;
    matches!(
        e,
        AssistantError::Llm(crate::llm::LlmError::Rpc(
            RpcError::Unreachable { .. } | RpcError::Handshake { .. } | RpcError::Lost { .. }
        ))
    )
}

/// Load the model at `path` beside `engine` (a draft model): the memory
/// check counts `engine`'s estimate first.
fn load_beside(
    opts: &ServeOptions,
    engine: &Engine,
    (name, path): (&str, &Path),
) -> Result<Engine, AssistantError> {
    let s = &opts.session;
    let settings = (s.ctx_tokens, s.batch_tokens, s.kv);
    let beside = crate::board::estimate(
        &GgufFile::open(engine.path())?,
        s.ctx_tokens,
        s.batch_tokens,
        s.kv,
    );
    let gguf = GgufFile::open(path)?;
    gguf.check_model()?;
    crate::board::check_fits_beside(&opts.board, &gguf, settings, &opts.sys_root, Some(beside))?;
    Ok(Engine::from_gguf(name, gguf, &opts.load)?)
}

/// The model a conversation runs on, with the `--lora` every new
/// conversation starts with.
struct Loaded {
    engine: Engine,
    startup_adapter: Option<(AdapterId, f32)>,
    base_sha: Option<String>,
    /// The store's adapters for this model, loaded for the HTTP API beside
    /// the console (empty without it).
    http_adapters: Vec<(String, AdapterId, f32)>,
    /// The `--draft` model, when it shares this model's vocabulary.
    draft: Option<Engine>,
}

/// Load the model, and `--lora` onto it. At start-up (`first`) a failure is
/// the service's error; after a `/model` switch the caller falls back.
fn load_model(
    opts: &ServeOptions,
    store: &Store,
    (name, path): (&str, &Path),
    (first, http): (bool, bool),
    notice: &mut Option<String>,
) -> Result<Loaded, AssistantError> {
    let mut engine = load_engine(opts, name, path)?;
    // Hashed only if an adapter may be loaded (a model outside the store
    // has no receipt, and hashing gigabytes would slow every start).
    let http_store = http && !store.adapters().is_empty();
    let base_sha = (opts.lora.is_some() || http_store)
        .then(|| store.model_sha256(name, path).ok())
        .flatten();
    let http_adapters = match (&base_sha, http_store) {
        (Some(sha), true) => crate::http::load_store_adapters(&mut engine, store, sha),
        _ => Vec::new(),
    };
    let mut startup_adapter = None;
    if let Some(spec) = &opts.lora {
        let loaded = crate::llm::parse_adapter_spec(spec)
            .map_err(AssistantError::from)
            .and_then(|(spec, scale)| {
                let (aname, apath) = store.resolve_adapter(&spec, true)?;
                let id = engine.load_adapter(&aname, &apath, base_sha.as_deref())?;
                Ok((id, scale))
            });
        match loaded {
            Ok(a) => startup_adapter = Some(a),
            // After a `/model` switch the new model runs without it (the
            // adapter was trained for the other base).
            Err(e) if !first => {
                *notice = Some(format!("--lora {spec} does not apply to {name}: {e}"))
            }
            Err(e) => return Err(e),
        }
    }
    let draft = load_draft(opts, &engine, first, notice)?;
    Ok(Loaded {
        engine,
        startup_adapter,
        base_sha,
        http_adapters,
        draft,
    })
}

/// The `--draft` model for `engine`: refused at start-up when the two
/// vocabularies differ; after a `/model` switch the new model runs
/// without a draft, and the console says why.
fn load_draft(
    opts: &ServeOptions,
    engine: &Engine,
    first: bool,
    notice: &mut Option<String>,
) -> Result<Option<Engine>, AssistantError> {
    let Some((name, path)) = opts.draft.as_ref().and_then(|d| d.model.as_ref()) else {
        return Ok(None);
    };
    let loaded = load_beside(opts, engine, (name, path)).and_then(|d| {
        crate::llm::check_vocab(engine, &d)?;
        Ok(d)
    });
    match loaded {
        Ok(d) => Ok(Some(d)),
        Err(e) if !first => {
            *notice = Some(format!("--draft {name} is off for {}: {e}", engine.name()));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Load adapter `name` at `path` onto the running model `model` (name,
/// path), checked against the model's sha256; the error as the console
/// shows it.
fn load_adapter(
    loaded: &mut Loaded,
    store: &Store,
    model: (&str, &Path),
    (name, path): (&str, &Path),
) -> Result<AdapterId, String> {
    if loaded.base_sha.is_none() {
        loaded.base_sha = store.model_sha256(model.0, model.1).ok();
    }
    loaded
        .engine
        .load_adapter(name, path, loaded.base_sha.as_deref())
        .map_err(|e| {
            tracing::warn!(adapter = %name, error = %e, "adapter refused");
            crate::report(&e)
        })
}

/// Run the assistant on `connector` until stdin ends (stdio) or forever
/// (serial: unplugging the port waits for it to come back). `service` hears
/// when the assistant is ready and that its loop is alive.
pub fn serve(
    opts: &ServeOptions,
    (store, manifest): (&Store, &Manifest),
    connector: &mut dyn Connector,
    ear: Option<&Ear>,
    http: Option<&Api>,
    service: &dyn Service,
) -> Result<(), AssistantError> {
    service.status("finding the model (pulled if missing)");
    let (name, path) = store.resolve_llm(opts.model.as_deref(), manifest, true)?;
    service.status(&format!("loading model {name}"));
    let mut host = Host {
        opts,
        store,
        manifest,
        service,
        ear,
        ear_done: ear.is_none(),
        http,
        model: (name, path),
        link: None,
        ready: false,
        governor: Governor::new(&opts.board, opts.session.threads, &opts.sys_root),
        previous: None,
        notice: None,
        resume: Resume::Fresh(Vec::new()),
        input_ended: false,
    };
    loop {
        let Some(mut loaded) = host.load()? else {
            continue;
        };
        loop {
            match host.conversations(connector, &loaded)? {
                Next::Again => {}
                Next::Adapter(load) => {
                    let AdapterLoad {
                        name,
                        path,
                        scale,
                        carry,
                        pending,
                    } = *load;
                    host.resume =
                        host.adapter_loaded(&mut loaded, (&name, &path, scale), carry, pending);
                }
                Next::Reload => break,
                Next::Stop => return Ok(()),
            }
        }
    }
}

/// What the loop does after a conversation.
enum Next {
    /// Another conversation on the same model.
    Again,
    /// Load an adapter onto the model (which needs it to itself), then go on.
    Adapter(Box<AdapterLoad>),
    /// Load the model `Host::model` names (a `/model` switch).
    Reload,
    Stop,
}

/// `/lora use` of an adapter not loaded yet.
struct AdapterLoad {
    name: String,
    path: PathBuf,
    scale: f32,
    carry: Box<Carry>,
    pending: Vec<u8>,
}

/// The loop's state across conversations: the model, the link, the ear,
/// and what carries from one conversation to the next.
struct Host<'a> {
    opts: &'a ServeOptions,
    store: &'a Store,
    manifest: &'a Manifest,
    service: &'a dyn Service,
    ear: Option<&'a Ear>,
    ear_done: bool,
    /// The HTTP API served beside the console, on the same engine.
    http: Option<&'a Api>,
    /// The model to run: name and path.
    model: (String, PathBuf),
    link: Option<Channels>,
    ready: bool,
    governor: Governor,
    /// After `/model`: the model to fall back to.
    previous: Option<(String, PathBuf)>,
    /// What to tell the console when the next conversation starts.
    notice: Option<String>,
    resume: Resume,
    /// The link's input ended (stdin closed): a property of the link, which
    /// outlives the conversations on it.
    input_ended: bool,
}

impl Host<'_> {
    /// Load adapter `name` for the conversation `carry` continues, and say
    /// how it went when it resumes.
    fn adapter_loaded(
        &self,
        loaded: &mut Loaded,
        (name, path, scale): (&str, &Path, f32),
        carry: Box<Carry>,
        pending: Vec<u8>,
    ) -> Resume {
        let (model, model_path) = &self.model;
        let (adapter, said) =
            match load_adapter(loaded, self.store, (model, model_path), (name, path)) {
                Ok(id) => (
                    Some((id, scale)),
                    Event::info(
                        "lora",
                        format!("(adapter {name} at scale {scale}; the conversation continues)"),
                    ),
                ),
                Err(e) => (carry.adapter, Event::error(e)),
            };
        Resume::Carried {
            carry,
            adapter,
            said,
            pending,
        }
    }

    /// Load `self.model`; after a failed switch fall back to the model that
    /// was running (`Ok(None)`: load again). Nothing typed on the console
    /// may end the service.
    fn load(&mut self) -> Result<Option<Loaded>, AssistantError> {
        let (name, path) = &self.model;
        match load_model(
            self.opts,
            self.store,
            (name, path),
            (!self.ready, self.http.is_some()),
            &mut self.notice,
        ) {
            Ok(l) => Ok(Some(l)),
            Err(e) => match self.previous.take() {
                Some((pname, ppath)) => {
                    tracing::warn!(model = %name, error = %e, "model switch failed");
                    self.notice = Some(format!(
                        "cannot switch to {name}: {}; staying on {pname}",
                        crate::report(&e)
                    ));
                    self.model = (pname, ppath);
                    Ok(None)
                }
                None => Err(e),
            },
        }
    }

    /// Conversations on the link while the HTTP API's worker (if any)
    /// answers on the same engine, until one needs the engine to itself or
    /// the service stops; the worker finishes its answer and stops first.
    fn conversations(
        &mut self,
        connector: &mut dyn Connector,
        loaded: &Loaded,
    ) -> Result<Next, AssistantError> {
        let quit = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Some(api) = self.http {
                let served = Served::new(
                    loaded.engine.name(),
                    loaded.http_adapters.clone(),
                    loaded.startup_adapter,
                );
                let (engine, quit) = (&loaded.engine, &quit);
                // As the console drafts: with the draft model, or prompt
                // lookup; not at all when the draft model did not load.
                let draft = self.opts.draft.as_ref().and_then(|d| {
                    match (loaded.draft.as_ref(), &d.model) {
                        (None, Some(_)) => None,
                        (m, _) => Some((m, d.opts)),
                    }
                });
                let prompt_cache = self.opts.prompt_cache.then(|| {
                    super::core::prompt_cache(self.store, engine)
                        .map_err(|why| tracing::warn!(%why, "prompt cache: not used for the HTTP API"))
                        .ok()
                }).flatten();
                let speed = crate::http::Speedups {
                    draft,
                    prompt_cache,
                };
                s.spawn(move || api.work(engine, speed, served, quit));
            }
            let next = loop {
                match self.conversation(connector, loaded) {
                    Ok(Next::Again) => {}
                    other => break other,
                }
            };
            quit.store(true, Ordering::Relaxed);
            next
        })
    }

    /// One conversation on the link (opened, or waited for, first).
    fn conversation(
        &mut self,
        connector: &mut dyn Connector,
        loaded: &Loaded,
    ) -> Result<Next, AssistantError> {
        // Ready once the model is loaded and the loop runs, the console
        // there or not: a UART that is not enabled, or a USB adapter plugged
        // in later, must not make systemd restart the service forever.
        if !self.ready {
            self.service.ready();
            self.ready = true;
        }
        let ch = match self.link.take() {
            Some(ch) if !ch.output.is_closed() => ch,
            _ => {
                self.input_ended = false;
                match connect(connector, self.service)? {
                    Some(ch) => ch,
                    None => return Ok(Next::Stop),
                }
            }
        };
        let ear = self.ear.filter(|_| !self.ear_done);
        let mut core = Core::new(
            self.opts,
            &loaded.engine,
            self.store,
            self.manifest,
            &mut self.governor,
        )?;
        // A draft context that cannot be made (memory, a cache type the
        // draft model refuses) costs speed, not the console.
        if let Err(e) = core.set_draft(loaded.draft.as_ref()) {
            tracing::warn!(error = %crate::report(&e), "speculative decoding is off");
        }
        let mut con = Console::new(self.opts, core, &ch, self.service, ear);
        con.eof = self.input_ended;
        let resume = std::mem::replace(&mut self.resume, Resume::Fresh(Vec::new()));
        con.start(resume, loaded, self.notice.take())?;
        let end = con.run();
        self.ear_done |= con.ear.is_none();
        self.input_ended = con.eof;
        drop(con);
        Ok(match end {
            End::LinkLost | End::InputEnded if connector.reopens() => {
                tracing::warn!(port = %connector.describe(), "console link lost; waiting for it to come back");
                Next::Again
            }
            End::LinkLost | End::InputEnded => Next::Stop,
            End::Quit if connector.reopens() => {
                self.link = Some(ch);
                Next::Again
            }
            End::Quit | End::Stopping => Next::Stop,
            End::Adapter {
                name,
                path,
                scale,
                carry,
                pending,
            } => {
                self.link = Some(ch);
                Next::Adapter(Box::new(AdapterLoad {
                    name,
                    path,
                    scale,
                    carry,
                    pending,
                }))
            }
            End::Switch(name, path, rest) => {
                tracing::info!(model = %name, "switching model");
                self.previous = Some(std::mem::replace(&mut self.model, (name, path)));
                self.resume = Resume::Fresh(rest);
                self.link = Some(ch);
                Next::Reload
            }
        })
    }
}

/// One conversation on one link: the line editor, the type-ahead, the ear,
/// and the core they feed.
struct Console<'a, 'm> {
    opts: &'a ServeOptions,
    core: Core<'a, 'm>,
    ch: &'a Channels,
    service: &'a dyn Service,
    editor: LineEditor,
    type_ahead: Vec<u8>,
    /// Input ended while an answer was streaming: finish, then stop.
    eof: bool,
    /// Spoken queries, until the ear ends.
    ear: Option<&'a Ear>,
}

impl<'a, 'm> Console<'a, 'm> {
    fn new(
        opts: &'a ServeOptions,
        core: Core<'a, 'm>,
        ch: &'a Channels,
        service: &'a dyn Service,
        ear: Option<&'a Ear>,
    ) -> Self {
        Console {
            opts,
            core,
            ch,
            service,
            editor: LineEditor::new(opts.max_line_bytes, opts.echo && !opts.json),
            type_ahead: Vec::new(),
            eof: false,
            ear,
        }
    }

    /// Begin the conversation: a fresh one with its banner, or one carried
    /// over an adapter load.
    fn start(
        &mut self,
        resume: Resume,
        loaded: &Loaded,
        notice: Option<String>,
    ) -> Result<(), AssistantError> {
        match resume {
            Resume::Carried {
                carry,
                adapter,
                said,
                pending,
            } => {
                self.core.restore(*carry, adapter)?;
                self.type_ahead = pending;
                self.show(&said);
                self.prompt();
            }
            Resume::Fresh(pending) => {
                self.core.set_adapter(loaded.startup_adapter)?;
                self.type_ahead = pending;
                if let Some(msg) = notice {
                    self.show(&Event::error(msg));
                }
                self.show(&self.core.ready());
                self.prompt();
            }
        }
        Ok(())
    }

    fn send(&self, s: &str) {
        self.ch.output.send_str(s);
    }

    /// Render one event on the link (an empty answer piece shows nothing).
    fn show(&self, ev: &Event) {
        send_event(self.ch, self.opts.json, ev);
    }

    fn prompt(&self) {
        if !self.opts.json {
            self.send("> ");
        }
    }

    fn run(&mut self) -> End {
        loop {
            self.service.heartbeat();
            if self.service.stopping() {
                return End::Stopping;
            }
            if let Some(end) = self.remote_lost() {
                return end;
            }
            if let Some(end) = self.hear() {
                return end;
            }
            let chunk = match self.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(end) => return end,
            };
            if let Some(end) = self.feed(&chunk) {
                return end;
            }
        }
    }

    /// The HTTP API's worker, answering on the same engine, found an
    /// `--rpc` server gone (its answers ended with the error): load the
    /// model again, as after a console answer that found it.
    fn remote_lost(&mut self) -> Option<End> {
        let (ch, json) = (self.ch, self.opts.json);
        match self.core.after_answer(&mut |ev| {
            send_event(ch, json, &ev);
            ControlFlow::Continue(())
        }) {
            Outcome::Switch { name, path } => Some(End::Switch(name, path, Vec::new())),
            _ => None,
        }
    }

    /// The next bytes to edit: type-ahead first, then the link. `Ok(None)`
    /// when nothing came in time.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, End> {
        let wait = Duration::from_millis(if self.ear.is_some() { 40 } else { 500 });
        if !self.type_ahead.is_empty() {
            return Ok(Some(std::mem::take(&mut self.type_ahead)));
        }
        if self.eof {
            if self.ear.is_some() {
                // Typed input is over, spoken input is not.
                std::thread::sleep(wait);
                return Ok(None);
            }
            return Err(End::InputEnded);
        }
        match self.ch.input.recv_timeout(wait) {
            Ok(Input::Bytes(b)) => Ok(Some(b)),
            Ok(Input::Eof) => {
                tracing::info!("console input ended");
                self.eof = true;
                Ok(None)
            }
            Ok(Input::Lost(why)) => {
                tracing::warn!(reason = %why, "console link lost");
                Err(End::LinkLost)
            }
            Err(RecvTimeoutError::Timeout) if self.ch.output.is_closed() => Err(End::LinkLost),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(End::LinkLost),
        }
    }

    /// Edit `chunk` into lines and act on them. Echo goes out once per
    /// chunk, not once per byte: a terminal pasting a long line must not
    /// fill the output queue with one-byte chunks (and push out what follows).
    fn feed(&mut self, chunk: &[u8]) -> Option<End> {
        let mut echo = Vec::new();
        for (i, &b) in chunk.iter().enumerate() {
            let ev = match self.editor.feed(b) {
                None => continue,
                Some(line::Event::Echo(e)) => {
                    echo.extend(e);
                    continue;
                }
                Some(ev) => ev,
            };
            if !echo.is_empty() {
                self.ch.output.send(&std::mem::take(&mut echo));
            }
            if let Some(mut end) = self.on_edit(ev) {
                // The conversation goes on after a load or model switch:
                // keep what was already read after this line.
                let pending = match &mut end {
                    End::Adapter { pending, .. } => Some(pending),
                    End::Switch(_, _, rest) => Some(rest),
                    _ => None,
                };
                if let Some(pending) = pending {
                    *pending = chunk[i + 1..].to_vec();
                    pending.append(&mut self.type_ahead);
                    pending.truncate(MAX_TYPE_AHEAD);
                }
                return Some(end);
            }
            if !self.type_ahead.is_empty() {
                // Keep the order: the rest of this chunk goes before what
                // was typed during the answer.
                let mut rest = chunk[i + 1..].to_vec();
                rest.append(&mut self.type_ahead);
                rest.truncate(MAX_TYPE_AHEAD);
                self.type_ahead = rest;
                break;
            }
        }
        if !echo.is_empty() {
            self.ch.output.send(&echo);
        }
        None
    }

    /// Answer what the ear heard since the last look, if anything.
    fn hear(&mut self) -> Option<End> {
        let ear = self.ear?;
        let heard = match ear.heard.try_recv() {
            Ok(h) => h,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Heard::End,
        };
        match heard {
            Heard::Utterance(t) => {
                // Start on a fresh line if something was being typed.
                if !self.opts.json && !self.editor.is_empty() {
                    self.send("\n");
                }
                self.show(&Event::Heard {
                    text: t.text.clone(),
                    audio_s: t.audio_s,
                    stt_s: t.compute_s,
                });
                ear.status.set(Status::Thinking);
                let end = match &ear.mouth {
                    None => self.dispatch(Request::Question(t.text)),
                    Some(mouth) => {
                        // Speak each sentence as soon as it is written.
                        mouth.begin();
                        let mut split = Splitter::default();
                        let end = self.dispatch_with(Request::Question(t.text), &mut |ev| {
                            if let Event::Token { text } = ev {
                                split.push(text).into_iter().for_each(|s| mouth.say(s));
                            }
                        });
                        split.finish().into_iter().for_each(|s| mouth.say(s));
                        end
                    }
                };
                // The speaker or the ear may have taken the status over.
                ear.status.transition(&[Status::Thinking], Status::Idle);
                if end.is_none() {
                    self.prompt();
                }
                end
            }
            Heard::Failed(e) => {
                self.show(&Event::error(format!("listening stopped: {e}")));
                self.ear = None;
                None
            }
            Heard::End => {
                tracing::info!("audio input ended");
                self.ear = None;
                None
            }
        }
    }

    fn on_edit(&mut self, ev: line::Event) -> Option<End> {
        let echo = self.opts.echo && !self.opts.json;
        match ev {
            line::Event::Echo(b) => {
                self.ch.output.send(&b);
                None
            }
            line::Event::Cleared => {
                if echo {
                    self.send("^C\n");
                }
                self.prompt();
                None
            }
            line::Event::Rejected(msg) => {
                if echo {
                    self.send("\n");
                }
                self.show(&Event::error(msg));
                self.prompt();
                None
            }
            line::Event::Line(line) => {
                if echo {
                    self.send("\n");
                }
                let end = self.on_line(line.trim());
                if end.is_none() {
                    self.prompt();
                }
                end
            }
        }
    }

    fn on_line(&mut self, line: &str) -> Option<End> {
        if line.is_empty() {
            return None;
        }
        let req = if self.opts.json {
            parse_json_line(line)
        } else {
            Request::from_text(line)
        };
        match req {
            Ok(req) => self.dispatch(req),
            Err(e) => {
                self.show(&Event::error(e));
                None
            }
        }
    }

    /// Hand a request to the core, rendering what it emits while watching
    /// the link for a cancel.
    fn dispatch(&mut self, req: Request) -> Option<End> {
        self.dispatch_with(req, &mut |_| {})
    }

    /// `dispatch`, with `tee` seeing every event too (the speaker).
    fn dispatch_with(&mut self, req: Request, tee: &mut dyn FnMut(&Event)) -> Option<End> {
        let mut watch = Watch {
            ch: self.ch,
            json: self.opts.json,
            service: self.service,
            type_ahead: &mut self.type_ahead,
            eof: &mut self.eof,
            link_lost: false,
        };
        let outcome = self.core.handle(req, &mut |ev| {
            tee(&ev);
            watch.emit(ev)
        });
        if watch.link_lost {
            return Some(End::LinkLost);
        }
        match outcome {
            Outcome::Continue => None,
            Outcome::Quit => Some(End::Quit),
            Outcome::Switch { name, path } => Some(End::Switch(name, path, Vec::new())),
            Outcome::LoadAdapter {
                name,
                path,
                scale,
                carry,
            } => Some(End::Adapter {
                name,
                path,
                scale,
                carry,
                pending: Vec::new(),
            }),
        }
    }
}

/// Render `ev` on the link.
fn send_event(ch: &Channels, json: bool, ev: &Event) {
    let mut ev = ev.clone();
    match &mut ev {
        Event::Token { text } if text.is_empty() => return,
        Event::Stats(s) => s.output_dropped_bytes = Some(ch.output.dropped()),
        _ => {}
    }
    if json {
        ch.output.send_str(&format!("{}\n", render::json(&ev)));
    } else {
        ch.output.send_str(&render::text(&ev));
    }
}

/// What an answer's events pass through: rendered on the link, and the link
/// read between tokens for Ctrl-C, BREAK or `{"cmd":"cancel"}` (cancel) and
/// for type-ahead (kept, bounded).
struct Watch<'w> {
    ch: &'w Channels,
    json: bool,
    service: &'w dyn Service,
    type_ahead: &'w mut Vec<u8>,
    eof: &'w mut bool,
    link_lost: bool,
}

impl Watch<'_> {
    fn emit(&mut self, ev: Event) -> ControlFlow<()> {
        self.service.heartbeat();
        send_event(self.ch, self.json, &ev);
        if self.service.stopping() {
            return ControlFlow::Break(());
        }
        while !*self.eof {
            match self.ch.input.try_recv() {
                Ok(Input::Bytes(b)) => {
                    if self.take_input(&b) {
                        return ControlFlow::Break(());
                    }
                }
                // No more input, but this answer is still wanted.
                Ok(Input::Eof) => *self.eof = true,
                Ok(Input::Lost(_)) | Err(TryRecvError::Disconnected) => {
                    self.link_lost = true;
                    return ControlFlow::Break(());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if self.ch.output.is_closed() {
            self.link_lost = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Keep `b` as type-ahead; true if it cancels the answer (the cancel
    /// itself is not kept).
    fn take_input(&mut self, b: &[u8]) -> bool {
        let keep = MAX_TYPE_AHEAD.saturating_sub(self.type_ahead.len());
        if b.len() > keep {
            tracing::warn!(
                bytes = b.len() - keep,
                "type-ahead during an answer over 64 KiB: dropped"
            );
        }
        if let Some(i) = b.iter().position(|&c| c == CTRL_C || c == BREAK) {
            self.type_ahead
                .extend(b[..i].iter().chain(&b[i + 1..]).take(keep));
            return true;
        }
        let start = self.type_ahead.len();
        self.type_ahead.extend(b.iter().take(keep));
        self.json && take_cancel_line(self.type_ahead, start)
    }
}

/// In JSON mode, a complete `{"cmd":"cancel"}` line among the type-ahead
/// (looking from the line that holds byte `from` on) cancels the answer; it
/// is removed, the rest kept.
fn take_cancel_line(buf: &mut Vec<u8>, from: usize) -> bool {
    let is_end = |c: &u8| *c == b'\n' || *c == b'\r';
    let mut start = buf[..from].iter().rposition(is_end).map_or(0, |i| i + 1);
    while let Some(len) = buf[start..].iter().position(is_end) {
        let line = &buf[start..start + len];
        // Only the `cmd` is looked at: a type-ahead question is parsed (its
        // schema converted) once, when its turn comes, not on every token.
        let cancel = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| match v.as_object() {
                Some(o) if o.len() == 1 => o.get("cmd").and_then(|c| c.as_str()).map(String::from),
                _ => None,
            })
            .is_some_and(|c| {
                Command::parse(&format!("/{}", c.trim_start_matches('/')))
                    == Some(Ok(Command::Cancel))
            });
        if cancel {
            buf.drain(start..=start + len);
            return true;
        }
        start += len + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_line_is_found_and_removed() {
        let mut b = b"{\"q\":\"a\"}\n{\"cmd\": \"cancel\"}\n{\"q\":\"b\"}\n".to_vec();
        assert!(take_cancel_line(&mut b, 0));
        assert_eq!(b, b"{\"q\":\"a\"}\n{\"q\":\"b\"}\n");
        let mut half = b"{\"cmd\": \"canc".to_vec();
        assert!(!take_cancel_line(&mut half, 0));
        half.extend_from_slice(b"el\"}\n");
        assert!(take_cancel_line(&mut half, 5));
        assert!(half.is_empty());
    }
}
