//! The line discipline of the console: turns raw bytes from a serial line
//! into whole, validated lines, with the editing a terminal user expects.
//!
//! Serial terminals send bytes as typed and do not echo, so this echoes (when
//! asked), handles backspace/DEL, CR, LF and CRLF, and Ctrl-C. Memory is
//! bounded: the buffer never grows past the configured maximum; an over-long
//! line is discarded up to its end and reported once. Bytes that cannot be a
//! query (invalid UTF-8, NUL and other control characters) make the line an
//! error, never a crash.

/// What a byte (or run of bytes) produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes to echo back to the terminal.
    Echo(Vec<u8>),
    /// A complete, valid line (without its terminator).
    Line(String),
    /// Ctrl-C at the prompt: the line was cleared.
    Cleared,
    /// The line was rejected; the message says why.
    Rejected(&'static str),
}

const BS: u8 = 0x08;
const DEL: u8 = 0x7f;
const CTRL_C: u8 = 0x03;

/// The editor's state for the line being typed.
pub struct LineEditor {
    buf: Vec<u8>,
    max_bytes: usize,
    echo: bool,
    overflow: bool,
    bad_control: bool,
    /// The previous byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
}

impl LineEditor {
    pub fn new(max_bytes: usize, echo: bool) -> Self {
        LineEditor {
            buf: Vec::with_capacity(max_bytes),
            max_bytes,
            echo,
            overflow: false,
            bad_control: false,
            after_cr: false,
        }
    }

    /// Bytes buffered for the current line (never more than the maximum).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.overflow = false;
        self.bad_control = false;
    }

    /// Feed one byte; at most one event comes out.
    pub fn feed(&mut self, b: u8) -> Option<Event> {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match b {
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                Some(self.finish())
            }
            CTRL_C => {
                self.reset();
                Some(Event::Cleared)
            }
            BS | DEL => {
                if self.overflow || self.buf.is_empty() {
                    return None;
                }
                // Remove one whole character, not one byte.
                let mut n = 1;
                while n < self.buf.len() && (self.buf[self.buf.len() - n] & 0xC0) == 0x80 {
                    n += 1;
                }
                self.buf.truncate(self.buf.len() - n);
                self.echo.then(|| Event::Echo(b"\x08 \x08".to_vec()))
            }
            _ => {
                if self.overflow {
                    return None;
                }
                if self.buf.len() >= self.max_bytes {
                    self.overflow = true;
                    self.buf.clear();
                    return None;
                }
                if (b < 0x20 && b != b'\t') || b == 0x7f {
                    self.bad_control = true;
                }
                self.buf.push(b);
                (self.echo && b >= 0x20).then(|| Event::Echo(vec![b]))
            }
        }
    }

    fn finish(&mut self) -> Event {
        let ev = if self.overflow {
            Event::Rejected("line too long: discarded")
        } else if self.bad_control {
            Event::Rejected("line contains control characters: ignored")
        } else {
            match std::str::from_utf8(&self.buf) {
                Ok(s) => Event::Line(s.to_string()),
                Err(_) => Event::Rejected("line is not valid UTF-8: ignored"),
            }
        };
        self.reset();
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ed: &mut LineEditor, bytes: &[u8]) -> Vec<Event> {
        bytes
            .iter()
            .filter_map(|&b| ed.feed(b))
            .filter(|e| !matches!(e, Event::Echo(_)))
            .collect()
    }

    #[test]
    fn cr_lf_and_crlf_end_lines_once() {
        let mut ed = LineEditor::new(64, false);
        let got = lines(&mut ed, b"a\rb\nc\r\nd\n\re\r\r\n");
        let want: Vec<Event> = ["a", "b", "c", "d", "", "e", ""]
            .into_iter()
            .map(|s| Event::Line(s.into()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn backspace_removes_whole_characters() {
        let mut ed = LineEditor::new(64, true);
        let got = lines(&mut ed, "héx\x08\x7f\x7fllo\r".as_bytes());
        assert_eq!(got, vec![Event::Line("llo".into())]);
        assert_eq!(ed.feed(b'a'), Some(Event::Echo(b"a".to_vec())));
        assert_eq!(ed.feed(0x7f), Some(Event::Echo(b"\x08 \x08".to_vec())));
    }

    #[test]
    fn overlong_lines_are_bounded_and_reported_once() {
        let mut ed = LineEditor::new(8, false);
        let got = lines(&mut ed, b"0123456789abcdef\rok\r");
        assert_eq!(
            got,
            vec![
                Event::Rejected("line too long: discarded"),
                Event::Line("ok".into())
            ]
        );
        assert!(ed.buf.capacity() <= 8);
    }

    #[test]
    fn garbage_is_rejected_and_ctrl_c_clears() {
        let mut ed = LineEditor::new(64, false);
        assert_eq!(
            lines(&mut ed, b"a\x00b\r"),
            vec![Event::Rejected("line contains control characters: ignored")]
        );
        assert_eq!(
            lines(&mut ed, b"\xff\xfe\r"),
            vec![Event::Rejected("line is not valid UTF-8: ignored")]
        );
        assert_eq!(
            lines(&mut ed, b"abc\x03d\r"),
            vec![Event::Cleared, Event::Line("d".into())]
        );
    }
}
