//! `ferrite chat`: a conversation on stdin/stdout, as llama.cpp's chat.
//!
//! Every failure belongs to one message: a line that is not UTF-8, or a
//! question the engine refuses, gets one error line on stderr and the
//! conversation goes on. Ctrl-C during an answer stops it within one token
//! and keeps the conversation; Ctrl-C at the prompt, or the end of input
//! (Ctrl-D), ends the chat. SIGINT is watched by a signal-hook thread:
//! while an answer streams it only raises a flag the answer's sink reads;
//! otherwise it ends the process (exit 130, as llama.cpp's chat).

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::SIGINT;
use signal_hook::iterator::Signals;

use super::args::ChatArgs;
use super::{Ctx, Out};

/// Exit status after Ctrl-C at the prompt (128 + SIGINT, as llama.cpp).
const EXIT_INTERRUPTED: u8 = 130;

/// What the SIGINT thread and the chat loop share.
#[derive(Default)]
struct Interrupt {
    /// An answer is streaming: Ctrl-C cancels it instead of ending the chat.
    answering: AtomicBool,
    /// Ctrl-C arrived during the answer.
    cancel: AtomicBool,
}

pub(crate) fn run(ctx: &Ctx, a: ChatArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let mut engine = ctx.load(&a.model)?;
    let adapter = a.lora.map(|l| ctx.load_lora(&mut engine, &l)).transpose()?;
    let mut sess = engine.session(ctx.session_opts(&a.model, a.gen.beams as usize))?;
    sess.set_adapter(adapter)?;
    sess.set_system(a.system);
    let params = a.gen.params();
    let interactive = std::io::stdin().is_terminal();
    let intr = Arc::new(Interrupt::default());
    watch_sigint(intr.clone())?;
    if interactive {
        eprintln!(
            "ferrite {} model={} ctx={} — /reset forgets, /quit or Ctrl-D ends, Ctrl-C stops an answer",
            ferrite::VERSION,
            engine.name(),
            sess.n_ctx()
        );
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut raw = Vec::new();
    loop {
        if interactive {
            write!(out, "> ")?;
            out.flush()?;
        }
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l.trim(),
            Err(_) => {
                eprintln!("error: line is not valid UTF-8: ignored");
                continue;
            }
        };
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                sess.reset();
                writeln!(out, "(conversation forgotten)")?;
                continue;
            }
            _ => {}
        }
        let mut broken = false;
        intr.cancel.store(false, Ordering::SeqCst);
        intr.answering.store(true, Ordering::SeqCst);
        let reply = {
            let mut write = out.sink(&mut broken);
            let cancel = &intr.cancel;
            let mut sink = |piece: &str| {
                if cancel.load(Ordering::SeqCst) {
                    return ControlFlow::Break(());
                }
                write(piece)
            };
            sess.ask(line, &params, &mut sink)
        };
        intr.answering.store(false, Ordering::SeqCst);
        if broken {
            return Ok(ExitCode::SUCCESS);
        }
        match reply {
            Ok(r) => {
                if r.finish == ferrite::llm::Finish::Cancelled {
                    write!(out, " [cancelled]")?;
                }
                writeln!(out)?;
                if a.stats {
                    eprintln!("{}", r.stats);
                }
            }
            Err(e) => {
                writeln!(out)?;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
