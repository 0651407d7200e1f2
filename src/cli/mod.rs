//! The `ferrite` program, ripgrep-style: `args` (what clap parses) →
//! `settings` (board profile, manifest, store: resolved once) → one small
//! function per command in its own file → `Out` (one locked stdout writer).
//! Errors become one line on stderr and exit code 1 (usage errors: 2, from
//! clap); a closed stdout pipe ends the program quietly with 0.

mod args;
mod ask;
mod bench;
mod board;
mod chat;
mod eval;
mod finetune;
mod logging;
mod models;
mod out;
mod perplexity;
mod progress;
mod rpc_server;
mod say;
mod serve;
mod service;
mod settings;
mod transcribe;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Cmd};
use out::Out;
use settings::Ctx;

/// Parse, set up logging, run the command, map the outcome to an exit code.
pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    logging::init(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` as clap prints them; a usage error as one line
/// (clap's message with its details, without the usage block) and exit
/// code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            // clap's message and its details (the missing argument, the
            // possible values, a tip), without its usage block.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let line = match parts.split_first() {
                None => "error: bad arguments".to_string(),
                Some((first, [])) => first.to_string(),
                Some((first, rest)) if first.ends_with(':') => {
                    format!("{first} {}", rest.join(", "))
                }
                Some((first, rest)) => format!("{first}; {}", rest.join("; ")),
            };
            eprintln!("{line} (see --help)");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::new(&cli.board)?;
    command(&ctx, cli.cmd).map_err(|e| settings::store_hint(e, &ctx))
}

fn command(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let mut out = Out::new();
    match cmd {
        Cmd::Ask(a) => ask::run(ctx, a, &mut out)?,
        Cmd::Chat(a) => return chat::run(ctx, a, &mut out),
        Cmd::Transcribe(a) => transcribe::run(ctx, a, &mut out)?,
        Cmd::Say(a) => say::run(ctx, a, &mut out)?,
        Cmd::Perplexity(a) => perplexity::run(ctx, a, &mut out)?,
        Cmd::Bench(a) => bench::run(ctx, a, &mut out)?,
        Cmd::Serve(a) => serve::run(ctx, a, false, &mut out)?,
        Cmd::Listen(a) => serve::run(ctx, a, true, &mut out)?,
        Cmd::Models { cmd } => models::run(ctx, cmd, &mut out)?,
        Cmd::Finetune(a) => finetune::run(ctx, a, &mut out)?,
        Cmd::Eval(a) => eval::run(ctx, a, &mut out)?,
        Cmd::Board { cmd } => board::run(ctx, cmd, &mut out)?,
        Cmd::RpcServer(a) => rpc_server::run(ctx, a)?,
    }
    Ok(ExitCode::SUCCESS)
}
