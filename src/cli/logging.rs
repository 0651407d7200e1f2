//! Logs: `tracing` to stderr, quiet unless `-v` (llama.cpp's and whisper.cpp's
//! own logs are routed into it and shown from `-v`), `FERRITE_LOG` for a full
//! filter.
//!
//! Colour only on a terminal: a file or a pipe gets plain text. Under
//! journald (`JOURNAL_STREAM` names the device and inode stderr is
//! connected to, as systemd.exec(5) describes) lines carry no timestamp,
//! since the journal adds its own, and start with the syslog priority
//! (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald
//! reads as the entry's level (sd-daemon(3)).

use std::fmt;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub(crate) fn init(verbose: u8) {
    let default = match verbose {
        0 => "ferrite=warn,llama_cpp_2=off",
        1 => "info,llama_cpp_2=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false)
            .with_target(verbose > 1);
        builder
            .with_ansi(false)
            .event_format(Priority(format))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Whether stderr is the stream systemd connected to journald:
/// `JOURNAL_STREAM=DEV:INODE` matching stderr's own device and inode (a child
/// that inherited the variable but writes elsewhere does not match).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// A format that puts the syslog priority of the event's level first.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let p = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(w, "<{p}>")?;
        self.0.format_event(ctx, w, event)
    }
}
