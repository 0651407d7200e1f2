//! Everything a command prints for the user goes through one stdout writer, so a closed pipe (`ferrite models list | head -1`, `| grep -q`)
//! is an ordinary `BrokenPipe` error that `main` turns into a quiet exit 0,
//! never `println!`'s panic. Logs and progress bars go to stderr.

use std::io::{self, Write};
use std::ops::ControlFlow;

/// stdout, locked per write (the serial console's stdio link writes from its
/// own thread, so the lock is never held between writes).
pub(crate) struct Out {
    inner: io::Stdout,
}

impl Out {
    pub(crate) fn new() -> Out {
        Out {
            inner: io::stdout(),
        }
    }

    /// A sink for streamed answer pieces: each piece is written and flushed;
    /// a closed pipe sets `broken` and cancels the answer.
    pub(crate) fn sink<'a>(
        &'a mut self,
        broken: &'a mut bool,
    ) -> impl FnMut(&str) -> ControlFlow<()> + 'a {
        move |piece: &str| {
            if self
                .inner
                .write_all(piece.as_bytes())
                .and_then(|()| self.inner.flush())
                .is_err()
            {
                *broken = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether an error is, somewhere in its chain, a closed stdout pipe.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
