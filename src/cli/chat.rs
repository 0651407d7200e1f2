//! `ferrite chat`: a conversation on the terminal, a front end of the same
//! assistant core as the serial console, with the same slash commands
//! (`/help`, `/stats`, `/set`, `/system`, `/lora`, `/model`, ...; an unknown
//! command is an error, never a question to the model).
//!
//! On a terminal the line is read with rustyline (editing, arrow keys,
//! history); piped input is read line by line. Every failure belongs to one
//! message: a line that is not UTF-8, or a request the core refuses, is one
//! error line on stderr and the conversation goes on. Ctrl-C during an
//! answer stops it within one token and keeps the conversation; Ctrl-C at
//! the prompt (exit 130, as llama.cpp's chat) or Ctrl-D (exit 0) ends it.
//! While an answer streams the terminal is in its normal mode, so Ctrl-C is
//! SIGINT: a signal-hook thread raises a flag the answer's events check.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrite::assistant::{self, render, Core, Event, Outcome, Request, ServeOptions};
use ferrite::board::Governor;
use ferrite::llm::{AdapterId, Engine};
use signal_hook::consts::SIGINT;
use signal_hook::iterator::Signals;

use super::args::ChatArgs;
use super::{Ctx, Out};

/// Exit status after Ctrl-C at the prompt (128 + SIGINT, as llama.cpp).
const EXIT_INTERRUPTED: u8 = 130;

/// What the SIGINT thread and the chat share.
#[derive(Default)]
struct Interrupt {
    /// An answer is streaming: Ctrl-C cancels it instead of ending the chat.
    answering: AtomicBool,
    /// Ctrl-C arrived during the answer.
    cancel: AtomicBool,
}

/// Where typed lines come from.
enum Lines {
    Terminal(Box<rustyline::DefaultEditor>),
    Piped(std::io::StdinLock<'static>),
}

/// One line read: text, a line to report and skip, or the end.
enum Read {
    Line(String),
    Bad(&'static str),
    End(ExitCode),
}

impl Lines {
    fn open() -> anyhow::Result<Lines> {
        if std::io::stdin().is_terminal() {
            Ok(Lines::Terminal(Box::new(rustyline::DefaultEditor::new()?)))
        } else {
            Ok(Lines::Piped(std::io::stdin().lock()))
        }
    }

    fn read(&mut self) -> anyhow::Result<Read> {
        match self {
            Lines::Terminal(ed) => match ed.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = ed.add_history_entry(line.as_str());
                    }
                    Ok(Read::Line(line))
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    Ok(Read::End(ExitCode::from(EXIT_INTERRUPTED)))
                }
                Err(rustyline::error::ReadlineError::Eof) => Ok(Read::End(ExitCode::SUCCESS)),
                Err(e) => Err(e.into()),
            },
            Lines::Piped(input) => {
                let mut raw = Vec::new();
                if input.read_until(b'\n', &mut raw)? == 0 {
                    return Ok(Read::End(ExitCode::SUCCESS));
                }
                Ok(match String::from_utf8(raw) {
                    Ok(l) => Read::Line(l),
                    Err(_) => Read::Bad("line is not valid UTF-8: ignored"),
                })
            }
        }
    }
}

/// How the chat goes on after a conversation ends.
enum Next {
    Exit(ExitCode),
    Switch(String, PathBuf),
}

pub(crate) fn run(ctx: &Ctx, a: ChatArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let opts = ServeOptions {
        prompt_cache: a.prompt_cache,
        ..ctx.serve_options(a.lora, &a.model, &a.gen, &a.draft, a.system)?
    };
    let intr = Arc::new(Interrupt::default());
    watch_sigint(intr.clone())?;
    let mut lines = Lines::open()?;
    let mut governor = Governor::new(&ctx.board, opts.session.threads, &opts.sys_root);
    let mut engine = ctx.load(&a.model)?;
    let mut draft = ctx.load_draft(&a.draft, &a.model)?;
    if let Some(d) = &draft {
        ferrite::llm::check_vocab(&engine, d)?;
    }
    loop {
        let adapter = opts
            .lora
            .as_deref()
            .map(|l| ctx.load_lora(&mut engine, l))
            .transpose()?;
        let chat = Chat {
            ctx,
            opts: &opts,
            stats: a.stats,
            intr: &intr,
        };
        let next = chat.converse(
            (&mut engine, draft.as_ref()),
            adapter,
            &mut governor,
            &mut lines,
            out,
        )?;
        match next {
            Next::Exit(code) => return Ok(code),
            Next::Switch(name, path) => match assistant::load_engine(&opts, &name, &path) {
                Ok(e) => {
                    if let Some(Err(why)) = draft.as_ref().map(|d| ferrite::llm::check_vocab(&e, d))
                    {
                        eprintln!("note: {why}: speculative decoding is off");
                        draft = None;
                    }
                    engine = e
                }
                Err(e) => eprintln!(
                    "error: cannot switch to {name}: {e}; staying on {}",
                    engine.name()
                ),
            },
        }
    }
}

/// One model's conversation, across adapter loads.
struct Chat<'a> {
    ctx: &'a Ctx,
    opts: &'a ServeOptions,
    stats: bool,
    intr: &'a Interrupt,
}

impl Chat<'_> {
    fn converse(
        &self,
        (engine, draft): (&mut Engine, Option<&Engine>),
        mut adapter: Option<(AdapterId, f32)>,
        governor: &mut Governor,
        lines: &mut Lines,
        out: &mut Out,
    ) -> anyhow::Result<Next> {
        let mut carry = None;
        loop {
            let mut core = Core::new(
                self.opts,
                engine,
                &self.ctx.store,
                &self.ctx.manifest,
                governor,
            )?;
            if let Err(e) = core.set_draft(draft) {
                eprintln!("note: speculative decoding is off: {}", ferrite::report(&e));
            }
            match carry.take() {
                Some(c) => core.restore(c, adapter)?,
                None => {
                    core.set_adapter(adapter)?;
                    if matches!(lines, Lines::Terminal(_)) {
                        eprint!("{}", render::text(&core.ready()));
                        eprintln!("/help lists the commands; Ctrl-C stops an answer, Ctrl-D ends the chat");
                    }
                }
            }
            let outcome = self.talk(&mut core, lines, out)?;
            drop(core);
            match outcome {
                Talk::Exit(code) => return Ok(Next::Exit(code)),
                Talk::Switch(name, path) => return Ok(Next::Switch(name, path)),
                Talk::LoadAdapter {
                    name,
                    path,
                    scale,
                    carry: c,
                } => {
                    let base = self.ctx.store.model_sha256(engine.name(), engine.path())?;
                    match engine.load_adapter(&name, &path, Some(&base)) {
                        Ok(id) => {
                            adapter = Some((id, scale));
                            writeln!(
                                out,
                                "(adapter {name} at scale {scale}; the conversation continues)"
                            )?;
                        }
                        Err(e) => {
                            adapter = c.adapter;
                            eprintln!("error: {e}");
                        }
                    }
                    carry = Some(*c);
                }
            }
        }
    }

    /// Read lines and hand them to the core until something ends the
    /// conversation.
    fn talk(
        &self,
        core: &mut Core<'_, '_>,
        lines: &mut Lines,
        out: &mut Out,
    ) -> anyhow::Result<Talk> {
        loop {
            if matches!(lines, Lines::Piped(_)) {
                out.flush()?;
            }
            let line = match lines.read()? {
                Read::Line(l) => l,
                Read::Bad(why) => {
                    eprintln!("error: {why}");
                    continue;
                }
                Read::End(code) => return Ok(Talk::Exit(code)),
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let req = match Request::from_text(line) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    continue;
                }
            };
            match self.handle(core, req, out)? {
                Outcome::Continue => {}
                Outcome::Quit => return Ok(Talk::Exit(ExitCode::SUCCESS)),
                Outcome::Switch { name, path } => return Ok(Talk::Switch(name, path)),
                Outcome::LoadAdapter {
                    name,
                    path,
                    scale,
                    carry,
                } => {
                    return Ok(Talk::LoadAdapter {
                        name,
                        path,
                        scale,
                        carry,
                    })
                }
            }
        }
    }

    /// One request: its events on stdout (errors and `--stats` on stderr),
    /// Ctrl-C cancelling an answer.
    fn handle(
        &self,
        core: &mut Core<'_, '_>,
        req: Request,
        out: &mut Out,
    ) -> anyhow::Result<Outcome> {
        let mut write_err = None;
        let mut broken = false;
        self.intr.cancel.store(false, Ordering::SeqCst);
        self.intr.answering.store(true, Ordering::SeqCst);
        let outcome = {
            let mut emit = |ev: Event| -> ControlFlow<()> {
                match &ev {
                    Event::Error { .. } => eprint!("{}", render::text(&ev)),
                    Event::Done { stats, .. } if self.stats => {
                        if let Err(e) =
                            write!(out, "{}", render::text(&ev)).and_then(|()| out.flush())
                        {
                            write_err.get_or_insert(e);
                        }
                        eprintln!("{stats}");
                    }
                    _ => {
                        if let Err(e) =
                            write!(out, "{}", render::text(&ev)).and_then(|()| out.flush())
                        {
                            broken = true;
                            write_err.get_or_insert(e);
                            return ControlFlow::Break(());
                        }
                    }
                }
                if self.intr.cancel.load(Ordering::SeqCst) {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            };
            core.handle(req, &mut emit)
        };
        self.intr.answering.store(false, Ordering::SeqCst);
        if let Some(e) = write_err {
            // A closed stdout ends the chat quietly (main maps BrokenPipe).
            let _ = broken;
            return Err(e.into());
        }
        Ok(outcome)
    }
}

/// How one conversation's talk ended.
enum Talk {
    Exit(ExitCode),
    Switch(String, PathBuf),
    LoadAdapter {
        name: String,
        path: PathBuf,
        scale: f32,
        carry: Box<assistant::Carry>,
    },
}

/// Route SIGINT: cancel the answer in progress, or end the chat.
fn watch_sigint(intr: Arc<Interrupt>) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT])?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if intr.answering.load(Ordering::SeqCst) {
                intr.cancel.store(true, Ordering::SeqCst);
            } else {
                // At the prompt: end the chat as llama.cpp does (stdout is
                // flushed at every prompt).
                eprintln!();
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });
    Ok(())
}
