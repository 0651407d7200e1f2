//! Byte-stream plumbing between the assistant and whatever carries the
//! conversation: a serial port (UART, USB gadget, USB-serial adapter), a
//! pseudo-terminal, or stdin/stdout. All of them are a `Link`: a reader and a
//! writer of bytes, so the assistant loop is one code path for all.
//!
//! Each link gets a reader thread and a writer thread joined to the loop by
//! bounded channels. The reader blocks on the port so the loop can watch for
//! Ctrl-C while it generates; the writer blocks on the port (honouring flow
//! control) so generation never does: when a stalled terminal lets the
//! output queue fill, output is dropped with a warning instead of hanging.

pub mod line;
pub mod serial;
pub mod stdio;

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;

/// A connected byte stream.
pub struct Link {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// A terminal line: `\n` is sent as `\r\n`.
    pub crlf: bool,
}

/// Something that can (re)open a link.
pub trait Connector {
    fn open(&mut self) -> std::io::Result<Link>;
    /// For logs and messages: the port path, or "stdio".
    fn describe(&self) -> String;
    /// Whether a lost link is waited for and reopened (a serial port that was
    /// unplugged) rather than ending the service (stdin at end of file).
    fn reopens(&self) -> bool;
}

/// What the reader thread hands the loop.
#[derive(Debug)]
pub enum Input {
    Bytes(Vec<u8>),
    /// End of input (stdin closed). What was already sent still gets done.
    Eof,
    /// The link is gone: an I/O error (USB unplugged, pty closed).
    Lost(String),
}

/// Chunks the reader may queue before it stops reading (the port then
/// buffers, and flow control holds the sender): at most 64 × 4 KiB.
const INPUT_QUEUE: usize = 64;
const READ_CHUNK: usize = 4096;
/// Output chunks queued for a slow terminal before output is dropped.
const OUTPUT_QUEUE: usize = 1024;

/// The loop's end of a running link. Dropping it lets the reader thread
/// finish at its next poll.
pub struct Channels {
    pub input: Receiver<Input>,
    pub output: Output,
    stop: Arc<AtomicBool>,
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Non-blocking writer to the link.
#[derive(Clone)]
pub struct Output {
    tx: SyncSender<Vec<u8>>,
    crlf: bool,
    dropped: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl Output {
    /// Queue bytes for the terminal; never blocks. Returns false when they
    /// had to be dropped (queue full or link gone).
    pub fn send(&self, text: &[u8]) -> bool {
        if text.is_empty() {
            return true;
        }
        let bytes = if self.crlf && text.contains(&b'\n') {
            let mut v = Vec::with_capacity(text.len() + 8);
            for (i, &b) in text.iter().enumerate() {
                if b == b'\n' && (i == 0 || text[i - 1] != b'\r') {
                    v.push(b'\r');
                }
                v.push(b);
            }
            v
        } else {
            text.to_vec()
        };
        let n = bytes.len() as u64;
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(n, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!("console output queue full (terminal not reading or flow control holding): dropping output");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.closed.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn send_str(&self, s: &str) -> bool {
        self.send(s.as_bytes())
    }

    /// Bytes dropped so far because the terminal did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writer hit an error: the link is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Start the reader and writer threads of a link.
pub fn start(link: Link) -> Channels {
    let Link {
        mut reader,
        mut writer,
        crlf,
    } = link;
    let (in_tx, in_rx) = mpsc::sync_channel::<Input>(INPUT_QUEUE);
    let (out_tx, out_rx) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
    let closed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let rstop = stop.clone();
    thread::Builder::new()
        .name("console-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let msg = match reader.read(&mut buf) {
                    Ok(0) => Input::Eof,
                    Ok(n) => Input::Bytes(buf[..n].to_vec()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                        ) =>
                    {
                        if rstop.load(Ordering::Relaxed) {
                            return;
                        }
                        continue;
                    }
                    Err(e) => Input::Lost(e.to_string()),
                };
                let last = !matches!(msg, Input::Bytes(_));
                if in_tx.send(msg).is_err() || last {
                    return;
                }
            }
        })
        .expect("spawn console reader");
    let wclosed = closed.clone();
    thread::Builder::new()
        .name("console-write".into())
        .spawn(move || {
            while let Ok(bytes) = out_rx.recv() {
                if let Err(e) = writer.write_all(&bytes).and_then(|()| writer.flush()) {
                    tracing::warn!(error = %e, "console write failed");
                    wclosed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
        .expect("spawn console writer");
    Channels {
        input: in_rx,
        output: Output {
            tx: out_tx,
            crlf,
            dropped: Arc::new(AtomicU64::new(0)),
            closed,
        },
        stop,
    }
}
