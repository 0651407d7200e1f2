//! The assistant loop behind `ferrite serve`: lines arrive from a console
//! link, commands are executed, questions are answered token by token.
//!
//! The loop owns the conversation and the sampling settings; the link comes
//! from a `Connector` (serial port, pseudo-terminal, stdio) and may vanish and
//! come back, in which case the loop waits, reopens it and starts a new
//! session. While an answer streams, the loop keeps reading the link so that
//! Ctrl-C (or BREAK, which a raw serial line delivers as NUL) cancels within
//! one token; anything else typed meanwhile is kept, bounded, as type-ahead.

mod commands;
mod protocol;
mod status;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use serde_json::json;

pub use commands::{Command, Setting, HELP};
pub use protocol::{parse_json_line, Request};
pub use status::rss_bytes;

use crate::board::{Board, BoardError, Governor};
use crate::console::line::{Event, LineEditor};
use crate::console::{self, Channels, Connector, Input};
use crate::gguf::GgufFile;
use crate::hw::{Status, StatusCell};
use crate::llm::{
    AdapterId, Engine, Finish, GenParams, LlmError, LoadOptions, Session, SessionOptions,
};
use crate::models::{Manifest, ModelsError, Store};
use crate::speech::listen::Heard;
use crate::systemd::{self, Heartbeat};

/// Spoken queries for the loop (`serve --listen`, `listen`): what the ear
/// heard, and the status it shares with the LED.
pub struct Ear {
    pub heard: std::sync::mpsc::Receiver<Heard>,
    pub status: StatusCell,
}

/// What `ferrite serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--lora NAME|PATH[:SCALE]` applied from the start.
    pub lora: Option<String>,
    /// Model name or path; `None` is the board's/manifest's default.
    pub model: Option<String>,
    pub load: LoadOptions,
    pub session: SessionOptions,
    pub params: GenParams,
    pub system: Option<String>,
    /// Echo typed characters (serial terminals do not echo locally).
    pub echo: bool,
    /// One JSON object per line in and out, for machines.
    pub json: bool,
    /// Longest accepted input line in bytes.
    pub max_line_bytes: usize,
    /// The board profile: memory budget and thermal limits.
    pub board: Board,
    /// Root of the filesystem to read `/proc` and `/sys` from (tests use a
    /// fake tree).
    pub sys_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Models(#[from] ModelsError),
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Adapter(#[from] crate::adapter::AdapterError),
    #[error("{what}: {source}")]
    Link {
        what: String,
        source: std::io::Error,
    },
}

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
    /// `/model NAME`, with the input already read after its line.
    Switch(String, PathBuf, Vec<u8>),
    /// `/lora use NAME` for an adapter not loaded yet: the engine loads it
    /// between conversations, then the conversation continues.
    Adapter {
        name: String,
        path: PathBuf,
        scale: f32,
        carry: Box<Carry>,
    },
}

/// What survives an adapter load: the conversation and the settings.
struct Carry {
    history: Vec<crate::llm::Message>,
    system: Option<String>,
    params: GenParams,
    /// Input already read after the `/lora use` line.
    pending: Vec<u8>,
    /// The adapter to continue with: the requested one once it loaded,
    /// else the one in use before.
    adapter: Option<(AdapterId, f32)>,
    /// What to tell the user about the load.
    notice: Result<String, String>,
}

/// Open the link, waiting for it to appear when the connector reopens.
fn connect(connector: &mut dyn Connector, hb: &Heartbeat) -> Result<Channels, AssistantError> {
    let mut warned = false;
    loop {
        hb.beat();
        match connector.open() {
            Ok(link) => {
                tracing::info!(port = %connector.describe(), "console open");
                return Ok(console::start(link));
            }
            Err(e) if connector.reopens() => {
                if !warned {
                    tracing::warn!(port = %connector.describe(), error = %e, "console not available; waiting for it");
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

/// Run the assistant on `connector` until stdin ends (stdio) or forever
/// (serial: unplugging the port waits for it to come back).
pub fn serve(
    opts: &ServeOptions,
    store: &Store,
    manifest: &Manifest,
    connector: &mut dyn Connector,
    ear: Option<&Ear>,
) -> Result<(), AssistantError> {
    let hb = systemd::watchdog();
    let mut ear_done = ear.is_none();
    // Input read after a `/model` line, for the conversation on the new model.
    let mut switch_pending: Vec<u8> = Vec::new();
    let (mut name, mut path) = store.resolve(opts.model.as_deref(), manifest, true)?;
    let mut link: Option<Channels> = None;
    let mut ready = false;
    let mut governor = Governor::new(&opts.board, opts.session.threads, &opts.sys_root);
    // After `/model`: the model to fall back to if the new one fails to
    // load, and what to tell the console about the switch.
    let mut previous: Option<(String, PathBuf)> = None;
    let mut notice: Option<String> = None;
    loop {
        let mut engine = match load_engine(opts, &name, &path) {
            Ok(e) => e,
            Err(e) => match previous.take() {
                // Nothing typed on the console may end the service: stay on
                // the model that was running.
                Some((pname, ppath)) => {
                    tracing::warn!(model = %name, error = %e, "model switch failed");
                    notice = Some(format!("cannot switch to {name}: {e}; staying on {pname}"));
                    (name, path) = (pname, ppath);
                    continue;
                }
                None => return Err(e),
            },
        };
        // Hashed only if an adapter is loaded (a model outside the store
        // has no receipt, and hashing gigabytes would slow every start).
        let base_sha = std::cell::OnceCell::new();
        let base_sha = || {
            base_sha
                .get_or_init(|| store.model_sha256(&name, &path).ok())
                .clone()
        };
        // `--lora`: every new conversation starts with it. At start-up a bad
        // adapter is an error; after a `/model` switch the new model simply
        // runs without it (the adapter was trained for the other base).
        let mut startup_adapter = None;
        if let Some(spec) = &opts.lora {
            let loaded = crate::llm::parse_adapter_spec(spec)
                .map_err(AssistantError::from)
                .and_then(|(spec, scale)| {
                    let (aname, apath) = store.resolve_adapter(&spec, true)?;
                    let id = engine.load_adapter(&aname, &apath, base_sha().as_deref())?;
                    Ok((id, scale))
                });
            match loaded {
                Ok(a) => startup_adapter = Some(a),
                Err(e) if ready => {
                    notice = Some(format!("--lora {spec} does not apply to {name}: {e}"))
                }
                Err(e) => return Err(e),
            }
        }
        let mut carry: Option<Box<Carry>> = None;
        loop {
            let ch = match link.take() {
                Some(ch) if !ch.output.is_closed() => ch,
                _ => connect(connector, &hb)?,
            };
            if !ready {
                systemd::notify("READY=1");
                ready = true;
            }
            let mut conv =
                Conversation::new(opts, &engine, store, manifest, &ch, &hb, &mut governor)?;
            conv.ear = ear.filter(|_| !ear_done);
            if let Some(c) = carry.take() {
                conv.session.set_adapter(c.adapter)?;
                conv.session.restore(c.history);
                conv.session.set_system(c.system);
                conv.params = c.params;
                conv.type_ahead = c.pending;
                match c.notice {
                    Ok(text) => conv.ok("lora", &text),
                    Err(msg) => conv.error(&msg),
                }
                conv.prompt();
            } else {
                conv.session.set_adapter(startup_adapter)?;
                conv.type_ahead = std::mem::take(&mut switch_pending);
                if let Some(msg) = notice.take() {
                    conv.error(&msg);
                }
                conv.banner();
            }
            let end = conv.run();
            ear_done |= conv.ear.is_none();
            drop(conv);
            match end {
                End::LinkLost | End::InputEnded if connector.reopens() => {
                    tracing::warn!(port = %connector.describe(), "console link lost; waiting for it to come back");
                }
                End::LinkLost | End::InputEnded => return Ok(()),
                End::Quit if connector.reopens() => link = Some(ch),
                End::Quit => return Ok(()),
                End::Adapter {
                    name: aname,
                    path: apath,
                    scale,
                    carry: mut c,
                } => {
                    match engine.load_adapter(&aname, &apath, base_sha().as_deref()) {
                        Ok(id) => {
                            c.adapter = Some((id, scale));
                            c.notice = Ok(format!(
                                "(adapter {aname} at scale {scale}; the conversation continues)"
                            ));
                        }
                        Err(e) => {
                            tracing::warn!(adapter = %aname, error = %e, "adapter refused");
                            c.notice = Err(e.to_string());
                        }
                    }
                    link = Some(ch);
                    carry = Some(c);
                }
                End::Switch(n, p, rest) => {
                    tracing::info!(model = %n, "switching model");
                    previous = Some((
                        std::mem::replace(&mut name, n),
                        std::mem::replace(&mut path, p),
                    ));
                    switch_pending = rest;
                    link = Some(ch);
                    break;
                }
            }
        }
    }
}

/// Validate `path` (GGUF, a model llama.cpp can run), check it fits the
/// board's memory, and load it.
fn load_engine(opts: &ServeOptions, name: &str, path: &Path) -> Result<Engine, AssistantError> {
    let gguf = check_switchable(opts, path)?;
    Ok(Engine::from_gguf(name, gguf, &opts.load)?)
}

/// What `/model` checks before it lets go of the running model: the file is a
/// language model (not a whisper model or an adapter) and it fits the board.
fn check_switchable(opts: &ServeOptions, path: &Path) -> Result<GgufFile, AssistantError> {
    let gguf = GgufFile::open(path)?;
    gguf.check_model()?;
    crate::board::check_fits(
        &opts.board,
        &gguf,
        opts.session.ctx_tokens,
        opts.session.batch_tokens,
        &opts.sys_root,
    )?;
    Ok(gguf)
}

/// One session on one link.
struct Conversation<'a, 'm> {
    opts: &'a ServeOptions,
    engine: &'m Engine,
    session: Session<'m>,
    params: GenParams,
    store: &'a Store,
    manifest: &'a Manifest,
    ch: &'a Channels,
    hb: &'a Heartbeat,
    governor: &'a mut Governor,
    editor: LineEditor,
    type_ahead: Vec<u8>,
    /// Input ended while an answer was streaming: finish, then stop.
    eof: bool,
    /// Spoken queries, until the ear ends.
    ear: Option<&'a Ear>,
}

impl<'a, 'm> Conversation<'a, 'm> {
    fn new(
        opts: &'a ServeOptions,
        engine: &'m Engine,
        store: &'a Store,
        manifest: &'a Manifest,
        ch: &'a Channels,
        hb: &'a Heartbeat,
        governor: &'a mut Governor,
    ) -> Result<Self, AssistantError> {
        let mut sopts = opts.session.clone();
        if governor.is_throttled() {
            sopts.threads = (opts.board.throttle_threads as i32).clamp(1, sopts.threads);
        }
        let mut session = engine.session(sopts)?;
        session.set_system(opts.system.clone());
        Ok(Conversation {
            opts,
            engine,
            session,
            params: opts.params.clone(),
            store,
            manifest,
            ch,
            hb,
            governor,
            editor: LineEditor::new(opts.max_line_bytes, opts.echo && !opts.json),
            type_ahead: Vec::new(),
            eof: false,
            ear: None,
        })
    }

    fn send(&self, s: &str) {
        self.ch.output.send_str(s);
    }

    fn send_json(&self, v: serde_json::Value) {
        self.send(&format!("{v}\n"));
    }

    fn prompt(&self) {
        if !self.opts.json {
            self.send("> ");
        }
    }

    fn error(&self, msg: &str) {
        if self.opts.json {
            self.send_json(json!({ "error": msg }));
        } else {
            self.send(&format!("error: {msg}\n"));
        }
    }

    fn banner(&self) {
        if self.opts.json {
            self.send_json(json!({
                "ready": true,
                "version": crate::VERSION,
                "model": self.engine.name(),
                "ctx": self.session.n_ctx(),
            }));
        } else {
            self.send(&format!(
                "ferrite {} model={} ctx={}\n",
                crate::VERSION,
                self.engine.name(),
                self.session.n_ctx()
            ));
        }
        self.prompt();
    }

    fn run(&mut self) -> End {
        loop {
            self.hb.beat();
            if let Some(end) = self.hear() {
                return end;
            }
            let wait = Duration::from_millis(if self.ear.is_some() { 40 } else { 500 });
            let chunk = if !self.type_ahead.is_empty() {
                std::mem::take(&mut self.type_ahead)
            } else if self.eof {
                if self.ear.is_some() {
                    // Typed input is over, spoken input is not.
                    std::thread::sleep(wait);
                    continue;
                }
                return End::InputEnded;
            } else {
                match self.ch.input.recv_timeout(wait) {
                    Ok(Input::Bytes(b)) => b,
                    Ok(Input::Eof) => {
                        tracing::info!("console input ended");
                        self.eof = true;
                        continue;
                    }
                    Ok(Input::Lost(why)) => {
                        tracing::warn!(reason = %why, "console link lost");
                        return End::LinkLost;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if self.ch.output.is_closed() {
                            return End::LinkLost;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return End::LinkLost,
                }
            };
            // Echo goes out once per chunk, not once per byte: a terminal
            // pasting a long line must not fill the output queue with
            // one-byte chunks (and push out what follows).
            let mut echo = Vec::new();
            for (i, &b) in chunk.iter().enumerate() {
                let ev = match self.editor.feed(b) {
                    None => continue,
                    Some(Event::Echo(e)) => {
                        echo.extend(e);
                        continue;
                    }
                    Some(ev) => ev,
                };
                if !echo.is_empty() {
                    self.ch.output.send(&std::mem::take(&mut echo));
                }
                let end = self.on_event(ev);
                if let Some(mut end) = end {
                    // The conversation goes on after a load or model switch:
                    // keep what was already read after this line.
                    let pending = match &mut end {
                        End::Adapter { carry, .. } => Some(&mut carry.pending),
                        End::Switch(_, _, rest) => Some(rest),
                        _ => None,
                    };
                    if let Some(pending) = pending {
                        *pending = chunk[i + 1..].to_vec();
                        pending.append(&mut self.type_ahead);
                        pending.truncate(MAX_TYPE_AHEAD);
                    }
                    return end;
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
        }
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
                if self.opts.json {
                    self.send_json(json!({
                        "heard": t.text, "audio_s": t.audio_s, "stt_s": t.compute_s
                    }));
                } else {
                    // Start on a fresh line if something was being typed.
                    if !self.editor.is_empty() {
                        self.send("\n");
                    }
                    self.send(&format!("you said: {}\n", t.text));
                }
                ear.status.set(Status::Thinking);
                let end = self.answer(&t.text);
                ear.status.set(Status::Idle);
                if end.is_none() {
                    self.prompt();
                }
                end
            }
            Heard::Failed(e) => {
                self.error(&format!("listening stopped: {e}"));
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

    fn on_event(&mut self, ev: Event) -> Option<End> {
        let echo = self.opts.echo && !self.opts.json;
        match ev {
            Event::Echo(b) => {
                self.ch.output.send(&b);
                None
            }
            Event::Cleared => {
                if echo {
                    self.send("^C\n");
                }
                self.prompt();
                None
            }
            Event::Rejected(msg) => {
                if echo {
                    self.send("\n");
                }
                self.error(msg);
                self.prompt();
                None
            }
            Event::Line(line) => {
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
        if self.opts.json {
            return match protocol::parse_json_line(line) {
                Ok(Request::Question(q)) => self.answer(&q),
                Ok(Request::Command(cmd)) => self.command(cmd),
                Err(e) => {
                    self.error(&e);
                    None
                }
            };
        }
        match Command::parse(line) {
            Some(Ok(cmd)) => self.command(cmd),
            Some(Err(e)) => {
                self.error(&e);
                None
            }
            None => self.answer(line),
        }
    }

    fn ok(&self, cmd: &str, text: &str) {
        if self.opts.json {
            self.send_json(json!({ "ok": cmd, "info": text }));
        } else {
            self.send(&format!("{text}\n"));
        }
    }

    fn command(&mut self, cmd: Command) -> Option<End> {
        match cmd {
            Command::Help => self.ok("help", HELP),
            Command::Reset => {
                self.session.reset();
                self.ok("reset", "(conversation forgotten)");
            }
            Command::Stats => self.stats(),
            Command::Show => {
                let p = &self.params;
                let text =
                    format!(
                    "temp={} top-k={} top-p={} min-p={} repeat-penalty={} n-predict={} seed={}{}",
                    p.temperature,
                    p.top_k,
                    p.top_p,
                    p.min_p,
                    p.repeat_penalty,
                    p.n_predict.map_or(-1, |n| n as i64),
                    if p.seed == u32::MAX { "random".to_string() } else { p.seed.to_string() },
                    self.session.system().map_or(String::new(), |s| format!("\nsystem: {s}"))
                );
                self.ok("show", &text);
            }
            Command::Set(s) => {
                let mut p = self.params.clone();
                s.apply(&mut p);
                match p.validate_for(self.session.n_ctx(), self.engine.n_vocab()) {
                    Ok(()) => {
                        self.params = p;
                        self.ok("set", &s.to_string());
                    }
                    Err(e) => self.error(&e.to_string()),
                }
            }
            Command::System(text) => {
                let set = text.is_some();
                self.session.set_system(text);
                self.ok(
                    "system",
                    if set {
                        "(system prompt set)"
                    } else {
                        "(system prompt cleared)"
                    },
                );
            }
            Command::Models => {
                // Only what can answer: pulled language models, not the
                // speech models that share the store.
                let names: Vec<String> = self
                    .store
                    .list(self.manifest)
                    .into_iter()
                    .filter(|l| l.pulled && l.kind == crate::models::ModelKind::Gguf)
                    .map(|l| {
                        if l.name == self.engine.name() {
                            format!("{} (in use)", l.name)
                        } else {
                            l.name
                        }
                    })
                    .collect();
                self.ok("models", &names.join("\n"));
            }
            Command::Model(name) => {
                // Names only: a console user never points ferrite at a path.
                if !crate::models::is_safe_name(&name) {
                    self.error("/model takes a model name from /models, not a path");
                    return None;
                }
                let checked = self
                    .store
                    .path(&name)
                    .map_err(AssistantError::from)
                    .and_then(|p| check_switchable(self.opts, &p).map(|_| p));
                match checked {
                    Ok(p) => {
                        self.ok(
                            "model",
                            &format!("(loading {name}; a new conversation starts)"),
                        );
                        return Some(End::Switch(name, p, Vec::new()));
                    }
                    Err(e) => self.error(&format!(
                        "cannot switch to {name}: {e}; staying on {}",
                        self.engine.name()
                    )),
                }
            }
            Command::Quit => {
                self.ok("quit", "bye");
                return Some(End::Quit);
            }
            Command::LoraList => {
                let active = self.session.adapter().map(|a| a.name.clone());
                let rows: Vec<String> = self
                    .store
                    .adapters()
                    .into_iter()
                    .map(|(n, _)| match (&active, self.session.adapter()) {
                        (Some(a), Some(x)) if *a == n => format!("{n} (in use, scale {})", x.scale),
                        _ => n,
                    })
                    .collect();
                if rows.is_empty() {
                    self.ok(
                        "lora",
                        "(no adapters in the store; train one with `ferrite finetune`)",
                    );
                } else {
                    self.ok("lora", &rows.join("\n"));
                }
            }
            Command::LoraOff => match self.session.set_adapter(None) {
                Ok(()) => self.ok("lora", "(adapter off: base model)"),
                Err(e) => self.error(&e.to_string()),
            },
            Command::LoraUse(name, scale) => {
                // Names only: a console user never points ferrite at a path.
                if !crate::models::is_safe_name(&name) {
                    self.error("/lora use takes an adapter name from /lora list, not a path");
                    return None;
                }
                if let Some(id) = self.engine.adapter_by_name(&name) {
                    match self.session.set_adapter(Some((id, scale))) {
                        Ok(()) => self.ok("lora", &format!("(adapter {name} at scale {scale})")),
                        Err(e) => self.error(&e.to_string()),
                    }
                    return None;
                }
                match self.store.resolve_adapter(&name, false) {
                    Ok((name, path)) => {
                        return Some(End::Adapter {
                            name,
                            path,
                            scale,
                            carry: Box::new(Carry {
                                history: self.session.history().to_vec(),
                                system: self.session.system().map(str::to_string),
                                params: self.params.clone(),
                                pending: Vec::new(),
                                adapter: self.session.adapter().map(|a| (a.id, a.scale)),
                                notice: Ok(String::new()),
                            }),
                        })
                    }
                    Err(e) => self.error(&e.to_string()),
                }
            }
        }
        None
    }

    fn stats(&self) {
        let rss = rss_bytes();
        let temp = self.governor.temperature_c();
        let throttled = self.governor.is_throttled();
        let last = self.session.last_stats().cloned();
        if self.opts.json {
            self.send_json(json!({
                "stats": {
                    "last": last,
                    "ctx_tokens": self.session.n_ctx(),
                    "turns": self.session.history().len() / 2,
                    "rss_bytes": rss,
                    "soc_temp_c": temp,
                    "throttled": throttled,
                    "threads": self.session.threads(),
                    "adapter": self.session.adapter().map(|a| json!({"name": a.name, "scale": a.scale})),
                    "output_dropped_bytes": self.ch.output.dropped(),
                }
            }));
            return;
        }
        let mut s = String::new();
        match &last {
            Some(st) => s.push_str(&format!(
                "last answer: {} tok at {:.1} tok/s, ttft {:.0} ms, prompt {} tok ({} cached) at {:.1} tok/s\n",
                st.gen_tokens,
                st.tokens_per_s(),
                st.ttft_ms,
                st.prompt_tokens,
                st.cached_tokens,
                st.prompt_tokens_per_s()
            )),
            None => s.push_str("last answer: none yet\n"),
        }
        if let Some(a) = self.session.adapter() {
            s.push_str(&format!("adapter: {} at scale {}\n", a.name, a.scale));
        }
        let used = last.as_ref().map_or(0, |st| st.ctx_used);
        s.push_str(&format!(
            "context: {used}/{} tokens, {} turns\n",
            self.session.n_ctx(),
            self.session.history().len() / 2
        ));
        s.push_str(&match rss {
            Some(b) => format!("memory: rss {:.1} MiB\n", b as f64 / (1024.0 * 1024.0)),
            None => "memory: not readable\n".into(),
        });
        s.push_str(&match temp {
            Some(t) => format!(
                "soc: {t:.1} °C, {} threads{}",
                self.session.threads(),
                if throttled { " (throttled)" } else { "" }
            ),
            None => format!(
                "soc: temperature not readable, {} threads",
                self.session.threads()
            ),
        });
        self.ok("stats", &s);
    }

    /// Stream an answer, watching the link for Ctrl-C/BREAK.
    fn answer(&mut self, q: &str) -> Option<End> {
        let _span = tracing::info_span!("answer").entered();
        if let Some(threads) = self.governor.check() {
            if let Err(e) = self.session.set_threads(threads) {
                self.error(&e.to_string());
                return None;
            }
        }
        let json = self.opts.json;
        let out = &self.ch.output;
        let input = &self.ch.input;
        let hb = self.hb;
        let type_ahead = &mut self.type_ahead;
        let eof = &mut self.eof;
        let mut link_lost = false;
        let mut sink = |piece: &str| {
            hb.beat();
            if !piece.is_empty() {
                if json {
                    out.send_str(&format!("{}\n", json!({ "token": piece })));
                } else {
                    out.send_str(piece);
                }
            }
            while !*eof {
                match input.try_recv() {
                    Ok(Input::Bytes(b)) => {
                        let cancel = b.iter().position(|&c| c == CTRL_C || c == BREAK);
                        let keep = MAX_TYPE_AHEAD.saturating_sub(type_ahead.len());
                        if b.len() > keep {
                            tracing::warn!(
                                bytes = b.len() - keep,
                                "type-ahead during an answer over 64 KiB: dropped"
                            );
                        }
                        match cancel {
                            Some(i) => {
                                type_ahead.extend(b[..i].iter().chain(&b[i + 1..]).take(keep));
                                return ControlFlow::Break(());
                            }
                            None => type_ahead.extend(b.iter().take(keep)),
                        }
                    }
                    // No more input, but this answer is still wanted.
                    Ok(Input::Eof) => *eof = true,
                    Ok(Input::Lost(_)) | Err(TryRecvError::Disconnected) => {
                        link_lost = true;
                        return ControlFlow::Break(());
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if out.is_closed() {
                link_lost = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let result = self.session.ask(q, &self.params, &mut sink);
        if link_lost {
            return Some(End::LinkLost);
        }
        match result {
            Ok(reply) => {
                if json {
                    self.send_json(
                        json!({ "done": true, "finish": reply.finish, "stats": reply.stats }),
                    );
                } else if reply.finish == Finish::Cancelled {
                    self.send(" [cancelled]\n");
                } else {
                    self.send("\n");
                }
            }
            Err(e) => self.error(&e.to_string()),
        }
        None
    }
}

/// The thermal root used outside tests.
pub fn default_sys_root() -> PathBuf {
    Path::new("/").to_path_buf()
}
