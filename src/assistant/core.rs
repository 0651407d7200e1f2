//! The conversation engine every front end shares: it takes typed requests
//! (a question, a console command) and answers with typed events
//! (`Event`), through a callback that also lets the front end cancel an
//! answer (returning `Break`, within one token). It holds the conversation
//! rules: the sampling settings and their ranges, the system prompt, which
//! models and adapters may be switched to, thermal throttling, `/stats`. It
//! knows nothing of links, line editing, JSON or terminals; what needs the
//! engine reloaded (another model, an adapter not loaded yet) it hands back
//! as an `Outcome` for the front end's loop.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::commands::{Command, HELP};
use super::event::{Event, StatsReport};
use super::protocol::Request;
use super::{AssistantError, ServeOptions};
use crate::board::Governor;
use crate::gguf::GgufFile;
use crate::llm::{AdapterId, Drafter, Engine, GenParams, LlmError, Message, Session};
use crate::models::{ModelKind, Store};

/// The front end's side of an answer: render the event; `Break` cancels the
/// answer in progress (Ctrl-C, a lost link).
pub type Emit<'e> = &'e mut dyn FnMut(Event) -> ControlFlow<()>;

/// What the front end's loop does next.
pub enum Outcome {
    /// Wait for the next request.
    Continue,
    /// `/quit`: this session is over.
    Quit,
    /// `/model NAME` passed its checks: load that model, start afresh.
    Switch { name: String, path: PathBuf },
    /// `/lora use NAME` for an adapter the engine has not loaded: load it,
    /// then continue the conversation (`Carry`).
    LoadAdapter {
        name: String,
        path: PathBuf,
        scale: f32,
        carry: Box<Carry>,
    },
}

/// What survives an engine change inside one conversation.
pub struct Carry {
    pub history: Vec<Message>,
    pub system: Option<String>,
    pub params: GenParams,
    /// The adapter in use before the load (kept if the new one fails).
    pub adapter: Option<(AdapterId, f32)>,
}

/// `/lora use`'s two ways.
enum LoraUse {
    /// The engine held it: switched, with this to say.
    Now(String),
    /// The loop must load it first.
    Load(Outcome),
}

/// One conversation on one loaded model.
pub struct Core<'a, 'm> {
    opts: &'a ServeOptions,
    engine: &'m Engine,
    session: Session<'m>,
    params: GenParams,
    store: &'a Store,
    manifest: &'a crate::models::Manifest,
    governor: &'a mut Governor,
}

impl<'a, 'm> Core<'a, 'm> {
    pub fn new(
        opts: &'a ServeOptions,
        engine: &'m Engine,
        store: &'a Store,
        manifest: &'a crate::models::Manifest,
        governor: &'a mut Governor,
    ) -> Result<Self, AssistantError> {
        let mut sopts = opts.session.clone();
        if governor.is_throttled() {
            sopts.threads = (opts.board.throttle_threads as i32).clamp(1, sopts.threads);
        }
        let mut session = engine.session(sopts)?;
        session.set_system(opts.system.clone());
        Ok(Core {
            opts,
            engine,
            session,
            params: opts.params.clone(),
            store,
            manifest,
            governor,
        })
    }

    /// The event a new conversation starts with.
    pub fn ready(&self) -> Event {
        Event::Ready {
            version: crate::VERSION,
            model: self.engine.name().to_string(),
            ctx: self.session.n_ctx(),
        }
    }

    /// Decode speculatively as `--draft`/`--lookup` asked, on `draft` (the
    /// loaded draft model; `None` for prompt lookup, or when the draft model
    /// did not fit this one).
    ///
    /// # Errors
    /// The draft model's context could not be made.
    pub fn set_draft(&mut self, draft: Option<&'m Engine>) -> Result<(), AssistantError> {
        let Some(setting) = &self.opts.draft else {
            return Ok(());
        };
        if draft.is_none() && setting.model.is_some() {
            return Ok(());
        }
        let drafter = Drafter::new(self.engine, draft, &self.opts.session)?;
        self.session.set_draft(Some((drafter, setting.opts)))?;
        Ok(())
    }

    /// Apply the conversation's adapter (or none); with `--prompt-cache`,
    /// the system prompt's state is then loaded for it (or saved).
    pub fn set_adapter(&mut self, adapter: Option<(AdapterId, f32)>) -> Result<(), AssistantError> {
        self.session.set_adapter(adapter)?;
        if self.opts.prompt_cache {
            warm(&mut self.session, self.store);
        }
        Ok(())
    }

    /// Continue a conversation after an engine change.
    pub fn restore(
        &mut self,
        carry: Carry,
        adapter: Option<(AdapterId, f32)>,
    ) -> Result<(), AssistantError> {
        self.session.set_adapter(adapter)?;
        self.session.restore(carry.history);
        self.session.set_system(carry.system);
        self.params = carry.params;
        if self.opts.prompt_cache {
            warm(&mut self.session, self.store);
        }
        Ok(())
    }

    /// Act on one request, emitting what it produces.
    pub fn handle(&mut self, req: Request, emit: Emit<'_>) -> Outcome {
        match req {
            Request::Question(q) => {
                self.answer(&q, emit);
                self.after_answer(emit)
            }
            Request::Structured(q, grammar) => {
                if let Err(e) = self.engine.check_grammar(&grammar) {
                    let _ = emit(Event::error(crate::report(&e)));
                    return Outcome::Continue;
                }
                // For this question only; the console's own setting stays.
                let kept = self.params.grammar.replace(*grammar);
                self.answer(&q, emit);
                self.params.grammar = kept;
                self.after_answer(emit)
            }
            Request::Command(c) => self.command(c, emit),
        }
    }

    /// After an answer: when an `--rpc` server holding layers stopped
    /// answering (the answer ended with that error), the model is loaded
    /// again, as a `/model` switch to itself does (`serve::load_engine`:
    /// on the servers if they answer, else on this board alone if it fits,
    /// else once they are back).
    pub(crate) fn after_answer(&self, emit: Emit<'_>) -> Outcome {
        if !self.engine.remote_lost() {
            return Outcome::Continue;
        }
        let _ = emit(Event::info(
            "model",
            format!(
                "(loading {} again: on the --rpc servers if they answer, else on this board alone if it fits, else when they are back)",
                self.engine.name()
            ),
        ));
        Outcome::Switch {
            name: self.engine.name().to_string(),
            path: self.engine.path().to_path_buf(),
        }
    }

    /// Stream an answer to `q` in the conversation.
    pub fn answer(&mut self, q: &str, emit: Emit<'_>) {
        let _span = tracing::info_span!("answer").entered();
        if let Some(threads) = self.governor.check() {
            if let Err(e) = self.session.set_threads(threads) {
                let _ = emit(Event::error(crate::report(&e)));
                return;
            }
        }
        let mut sink = |piece: &str| {
            emit(Event::Token {
                text: piece.to_string(),
            })
        };
        let result = self.session.ask(q, &self.params, &mut sink);
        let _ = emit(match result {
            Ok(reply) => Event::Done {
                finish: reply.finish,
                stats: reply.stats,
            },
            Err(e) => Event::error(crate::report(&e)),
        });
    }

    fn command(&mut self, cmd: Command, emit: Emit<'_>) -> Outcome {
        let ev = match cmd {
            Command::Help => Event::info("help", HELP),
            Command::Reset => {
                self.session.reset();
                Event::info("reset", "(conversation forgotten)")
            }
            Command::Stats => Event::Stats(Box::new(self.stats())),
            Command::Show => Event::info("show", self.show()),
            Command::Set(s) => {
                let mut p = self.params.clone();
                s.apply(&mut p);
                let checked = p
                    .validate_for(self.session.n_ctx(), self.engine.n_vocab())
                    .and_then(|()| {
                        p.grammar
                            .as_ref()
                            .map_or(Ok(()), |g| self.engine.check_grammar(g))
                            .map_err(LlmError::from)
                    });
                match checked {
                    Ok(()) => {
                        self.params = p;
                        Event::info("set", s.to_string())
                    }
                    Err(e) => Event::error(crate::report(&e)),
                }
            }
            Command::System(text) => {
                let set = text.is_some();
                self.session.set_system(text);
                Event::info(
                    "system",
                    if set {
                        "(system prompt set)"
                    } else {
                        "(system prompt cleared)"
                    },
                )
            }
            Command::Models => Event::info("models", self.models()),
            Command::Model(name) => match self.check_switch(&name) {
                Ok(path) => {
                    let _ = emit(Event::info(
                        "model",
                        format!("(loading {name}; a new conversation starts)"),
                    ));
                    return Outcome::Switch { name, path };
                }
                Err(e) => Event::error(e),
            },
            Command::Cancel => Event::info("cancel", "(nothing to cancel)"),
            Command::Quit => {
                let _ = emit(Event::info("quit", "bye"));
                return Outcome::Quit;
            }
            Command::LoraList => Event::info("lora", self.lora_list()),
            Command::LoraOff => match self.session.set_adapter(None) {
                Ok(()) => Event::info("lora", "(adapter off: base model)"),
                Err(e) => Event::error(crate::report(&e)),
            },
            Command::LoraUse(name, scale) => match self.lora_use(name, scale) {
                Ok(LoraUse::Now(text)) => Event::info("lora", text),
                Ok(LoraUse::Load(outcome)) => return outcome,
                Err(e) => Event::error(e),
            },
        };
        let _ = emit(ev);
        Outcome::Continue
    }

    fn show(&self) -> String {
        let p = &self.params;
        format!(
            "temp={} top-k={} top-p={} min-p={} repeat-penalty={} n-predict={} seed={}{}{}",
            p.temperature,
            p.top_k,
            p.top_p,
            p.min_p,
            p.repeat_penalty,
            p.n_predict.map_or(-1, |n| n as i64),
            if p.seed == u32::MAX {
                "random".to_string()
            } else {
                p.seed.to_string()
            },
            if p.grammar.is_some() {
                " grammar=on"
            } else {
                ""
            },
            self.session
                .system()
                .map_or(String::new(), |s| format!("\nsystem: {s}"))
        )
    }

    /// Only what can answer: pulled language models, not the speech models
    /// that share the store.
    fn models(&self) -> String {
        self.store
            .list(self.manifest)
            .into_iter()
            .filter(|l| l.pulled && l.kind == ModelKind::Gguf)
            .map(|l| {
                if l.name == self.engine.name() {
                    format!("{} (in use)", l.name)
                } else {
                    l.name
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `/model NAME`: a name from the store (never a path) of a language
    /// model that loads and fits the board; checked before the running
    /// model is let go.
    fn check_switch(&self, name: &str) -> Result<PathBuf, String> {
        if !crate::models::is_safe_name(name) {
            return Err("/model takes a model name from /models, not a path".into());
        }
        let staying = |e: String| {
            format!(
                "cannot switch to {name}: {e}; staying on {}",
                self.engine.name()
            )
        };
        let path = self
            .store
            .path(name)
            .map_err(|e| staying(crate::report(&e)))?;
        check_switchable(self.opts, &path).map_err(|e| staying(crate::report(&e)))?;
        Ok(path)
    }

    fn lora_list(&self) -> String {
        let active = self.session.adapter();
        let rows: Vec<String> = self
            .store
            .adapters()
            .into_iter()
            .map(|(n, _)| match active {
                Some(a) if a.name == n => format!("{n} (in use, scale {})", a.scale),
                _ => n,
            })
            .collect();
        if rows.is_empty() {
            "(no adapters in the store; train one with `ferrite finetune`)".into()
        } else {
            rows.join("\n")
        }
    }

    /// `/lora use NAME [SCALE]`: switch now if the engine holds the adapter,
    /// else ask the loop to load it.
    fn lora_use(&mut self, name: String, scale: f32) -> Result<LoraUse, String> {
        if !crate::models::is_safe_name(&name) {
            return Err("/lora use takes an adapter name from /lora list, not a path".into());
        }
        if let Some(id) = self.engine.adapter_by_name(&name) {
            self.session
                .set_adapter(Some((id, scale)))
                .map_err(|e| crate::report(&e))?;
            return Ok(LoraUse::Now(format!("(adapter {name} at scale {scale})")));
        }
        let (name, path) = self
            .store
            .resolve_adapter(&name, false)
            .map_err(|e| crate::report(&e))?;
        Ok(LoraUse::Load(Outcome::LoadAdapter {
            name,
            path,
            scale,
            carry: Box::new(Carry {
                history: self.session.history().to_vec(),
                system: self.session.system().map(str::to_string),
                params: self.params.clone(),
                adapter: self.session.adapter().map(|a| (a.id, a.scale)),
            }),
        }))
    }

    /// `/stats`, without what only the link knows.
    pub fn stats(&self) -> StatsReport {
        StatsReport {
            last: self.session.last_stats().cloned(),
            ctx_tokens: self.session.n_ctx(),
            turns: self.session.history().len() / 2,
            rss_bytes: super::status::rss_bytes(),
            soc_temp_c: self.governor.temperature_c(),
            throttled: self.governor.is_throttled(),
            threads: self.session.threads(),
            adapter: self.session.adapter().map(|a| (a.name.clone(), a.scale)),
            draft: self.session.draft_name(),
            output_dropped_bytes: None,
        }
    }
}

/// The store's `prompt-cache/` for `engine`'s model; `Err` says why not
/// (its file cannot be hashed, the folder cannot be made).
pub(crate) fn prompt_cache(
    store: &Store,
    engine: &Engine,
) -> Result<crate::llm::PromptCache, String> {
    let sha = store
        .model_sha256(engine.name(), engine.path())
        .map_err(|e| e.to_string())?;
    crate::llm::PromptCache::new(&store.root().join("prompt-cache"), &sha)
        .map_err(|e| e.to_string())
}

/// Load the system prompt's state from the store's `prompt-cache/` (or
/// evaluate and save it); a failure is logged and the conversation starts
/// without it.
fn warm(session: &mut Session<'_>, store: &Store) {
    let warmed = prompt_cache(store, session.engine())
        .and_then(|c| session.warm(&c).map_err(|e| crate::report(&e)));
    match warmed {
        Ok(warmed) => tracing::info!(?warmed, "prompt cache"),
        Err(why) => tracing::warn!(%why, "prompt cache: not used"),
    }
}

/// What `/model` checks before it lets go of the running model: the file is a
/// language model (not a whisper model or an adapter) and it fits the board.
pub(crate) fn check_switchable(
    opts: &ServeOptions,
    path: &Path,
) -> Result<GgufFile, AssistantError> {
    let gguf = GgufFile::open(path)?;
    gguf.check_model()?;
    let s = &opts.session;
    crate::board::check_fits_pooled(
        &opts.board,
        &gguf,
        (s.ctx_tokens, s.batch_tokens, s.kv),
        &opts.sys_root,
        None,
        crate::rpc::pooled_free(&opts.load.rpc).map_err(LlmError::from)?,
    )?;
    Ok(gguf)
}
