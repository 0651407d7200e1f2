//! The line discipline of the console: turns raw bytes from a serial line
//! into whole, validated lines, with the editing a terminal user expects.
//!
//! Serial terminals send bytes as typed and do not echo, so this echoes (when
//! asked) and edits the line itself, as a small readline would: printable
//! characters insert at the cursor; Backspace/DEL and Delete remove a
//! character; the arrow keys, Home/End and Ctrl-A/Ctrl-E move the cursor;
//! Ctrl-U clears the line; CR, LF and CRLF end it; Ctrl-C clears it. Keys
//! arrive as the terminal's escape sequences (`ESC [ D`, `ESC O H`,
//! `ESC [ 3 ~`, ... as xterm, VT100 and Linux consoles send them): a whole
//! sequence is one key, never characters of the line. Up/Down and other
//! sequences are consumed and ignored.
//!
//! What the terminal shows always matches the buffer: a character that the
//! terminal never displayed (a control character such as a lone ESC) is
//! kept invisibly and erasing it echoes nothing, and editing in the middle
//! of the line redraws its tail. A line still holding a control character,
//! invalid UTF-8 or more than the maximum bytes is rejected at its end with
//! one error, never a crash; memory is bounded by the maximum.

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
const ESC: u8 = 0x1b;
const CTRL_A: u8 = 0x01;
const CTRL_C: u8 = 0x03;
const CTRL_E: u8 = 0x05;
const CTRL_U: u8 = 0x15;
/// Bytes a CSI sequence may hold before it is given up as garbage.
const MAX_CSI: usize = 16;

/// One character of the line as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Char(char),
    /// A byte that is not part of valid UTF-8.
    Invalid(u8),
}

impl Cell {
    /// Columns the terminal advanced when it was echoed: 0 for what was not
    /// echoed (control characters, invalid bytes).
    fn width(self) -> usize {
        match self {
            Cell::Char(c) if !c.is_control() => 1,
            _ => 0,
        }
    }

    fn len(self) -> usize {
        match self {
            Cell::Char(c) => c.len_utf8(),
            Cell::Invalid(_) => 1,
        }
    }
}

/// Where the decoder is inside a multi-byte input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// After ESC.
    Esc,
    /// Inside `ESC [` (parameters so far) or `ESC O`.
    Csi(Vec<u8>),
    Ss3,
    /// Inside a UTF-8 character: bytes so far and bytes expected in all.
    Utf8(Vec<u8>, usize),
}

/// A key decoded from an escape sequence.
enum Key {
    Left,
    Right,
    Home,
    End,
    Delete,
    Ignored,
}

/// The editor's state for the line being typed.
pub struct LineEditor {
    buf: Vec<Cell>,
    /// Index into `buf` of the cursor.
    cursor: usize,
    /// Bytes the line holds (what `max_bytes` bounds).
    bytes: usize,
    max_bytes: usize,
    echo: bool,
    overflow: bool,
    pending: Pending,
    /// The previous byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
}

impl LineEditor {
    pub fn new(max_bytes: usize, echo: bool) -> Self {
        LineEditor {
            buf: Vec::with_capacity(max_bytes),
            cursor: 0,
            bytes: 0,
            max_bytes,
            echo,
            overflow: false,
            pending: Pending::None,
            after_cr: false,
        }
    }

    /// Bytes buffered for the current line (never more than the maximum).
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.cursor = 0;
        self.bytes = 0;
        self.overflow = false;
        self.pending = Pending::None;
    }

    /// Feed one byte; at most one event comes out.
    pub fn feed(&mut self, b: u8) -> Option<Event> {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => {}
            Pending::Esc => match b {
                b'[' => {
                    self.pending = Pending::Csi(Vec::new());
                    return None;
                }
                b'O' => {
                    self.pending = Pending::Ss3;
                    return None;
                }
                // A lone ESC: a character the terminal did not show. It
                // stays in the line (invisibly) unless erased.
                _ => {
                    let e = self.insert(Cell::Char(ESC as char));
                    return self.feed_plain(b, after_cr).or(e);
                }
            },
            Pending::Csi(mut params) => {
                if (0x40..=0x7e).contains(&b) {
                    return self.key(csi_key(&params, b));
                }
                if params.len() < MAX_CSI && (0x20..=0x3f).contains(&b) {
                    params.push(b);
                    self.pending = Pending::Csi(params);
                    return None;
                }
                // Not a sequence after all: drop it and read this byte anew.
                return self.feed_plain(b, after_cr);
            }
            Pending::Ss3 => {
                return self.key(match b {
                    b'D' => Key::Left,
                    b'C' => Key::Right,
                    b'H' => Key::Home,
                    b'F' => Key::End,
                    _ => Key::Ignored,
                })
            }
            Pending::Utf8(mut bytes, want) => {
                if b & 0xC0 == 0x80 {
                    bytes.push(b);
                    if bytes.len() < want {
                        self.pending = Pending::Utf8(bytes, want);
                        return None;
                    }
                    return match std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.chars().next())
                    {
                        Some(c) => self.insert(Cell::Char(c)),
                        None => self.insert_invalid(&bytes),
                    };
                }
                // A character cut short: its bytes are invalid, and this one
                // starts afresh.
                let e = self.insert_invalid(&bytes);
                return self.feed_plain(b, after_cr).or(e);
            }
        }
        self.feed_plain(b, after_cr)
    }

    /// A byte outside any sequence.
    fn feed_plain(&mut self, b: u8, after_cr: bool) -> Option<Event> {
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
            ESC => {
                self.pending = Pending::Esc;
                None
            }
            BS | DEL => self.backspace(),
            CTRL_A => self.key(Key::Home),
            CTRL_E => self.key(Key::End),
            CTRL_U => self.kill_line(),
            0xC2..=0xF4 => {
                let want = match b {
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    _ => 4,
                };
                self.pending = Pending::Utf8(vec![b], want);
                None
            }
            0x80..=0xFF => self.insert(Cell::Invalid(b)),
            _ => self.insert(Cell::Char(b as char)),
        }
    }

    fn insert_invalid(&mut self, bytes: &[u8]) -> Option<Event> {
        let mut echo = Vec::new();
        for &b in bytes {
            if let Some(Event::Echo(e)) = self.insert(Cell::Invalid(b)) {
                echo.extend(e);
            }
        }
        (!echo.is_empty()).then_some(Event::Echo(echo))
    }

    fn insert(&mut self, cell: Cell) -> Option<Event> {
        if self.overflow {
            return None;
        }
        if self.bytes + cell.len() > self.max_bytes {
            self.overflow = true;
            self.buf.clear();
            self.cursor = 0;
            self.bytes = 0;
            return None;
        }
        self.buf.insert(self.cursor, cell);
        self.cursor += 1;
        self.bytes += cell.len();
        if !self.echo || cell.width() == 0 && self.cursor == self.buf.len() {
            return None;
        }
        let mut out = Vec::new();
        push_cell(&mut out, cell);
        self.redraw_tail(&mut out, 0);
        Some(Event::Echo(out))
    }

    fn backspace(&mut self) -> Option<Event> {
        if self.overflow || self.cursor == 0 {
            return None;
        }
        self.cursor -= 1;
        let cell = self.buf.remove(self.cursor);
        self.bytes -= cell.len();
        self.erased(cell, true)
    }

    fn delete(&mut self) -> Option<Event> {
        if self.overflow || self.cursor == self.buf.len() {
            return None;
        }
        let cell = self.buf.remove(self.cursor);
        self.bytes -= cell.len();
        self.erased(cell, false)
    }

    /// Echo for a removed cell: step back over it if it was before the
    /// cursor and visible, then redraw the tail over the gap.
    fn erased(&self, cell: Cell, before: bool) -> Option<Event> {
        if !self.echo || cell.width() == 0 {
            return None;
        }
        let mut out = Vec::new();
        if before {
            out.push(BS);
        }
        self.redraw_tail(&mut out, cell.width());
        Some(Event::Echo(out))
    }

    fn kill_line(&mut self) -> Option<Event> {
        if self.overflow || self.buf.is_empty() {
            return None;
        }
        let left = self.width(0, self.cursor);
        let all = self.width(0, self.buf.len());
        self.reset();
        if !self.echo || all == 0 {
            return None;
        }
        let mut out = Vec::new();
        move_left(&mut out, left);
        out.extend(std::iter::repeat_n(b' ', all));
        move_left(&mut out, all);
        Some(Event::Echo(out))
    }

    fn key(&mut self, key: Key) -> Option<Event> {
        if self.overflow {
            return None;
        }
        let (to, out) = match key {
            Key::Delete => return self.delete(),
            Key::Ignored => return None,
            Key::Left => {
                let to = self.cursor.saturating_sub(1);
                (to, self.width(to, self.cursor))
            }
            Key::Home => (0, self.width(0, self.cursor)),
            Key::Right => {
                let to = (self.cursor + 1).min(self.buf.len());
                let mut out = Vec::new();
                for &c in &self.buf[self.cursor..to] {
                    push_cell(&mut out, c);
                }
                self.cursor = to;
                return (self.echo && !out.is_empty()).then_some(Event::Echo(out));
            }
            Key::End => {
                let mut out = Vec::new();
                for &c in &self.buf[self.cursor..] {
                    push_cell(&mut out, c);
                }
                self.cursor = self.buf.len();
                return (self.echo && !out.is_empty()).then_some(Event::Echo(out));
            }
        };
        self.cursor = to;
        if !self.echo || out == 0 {
            return None;
        }
        let mut bytes = Vec::new();
        move_left(&mut bytes, out);
        Some(Event::Echo(bytes))
    }

    /// Columns of `buf[from..to]` as the terminal shows them.
    fn width(&self, from: usize, to: usize) -> usize {
        self.buf[from..to].iter().map(|c| c.width()).sum()
    }

    /// Write the line from the cursor on, then `blank` spaces over what was
    /// there, and move back to the cursor.
    fn redraw_tail(&self, out: &mut Vec<u8>, blank: usize) {
        let tail = &self.buf[self.cursor..];
        for &c in tail {
            push_cell(out, c);
        }
        out.extend(std::iter::repeat_n(b' ', blank));
        move_left(out, self.width(self.cursor, self.buf.len()) + blank);
    }

    fn finish(&mut self) -> Event {
        let ev = if self.overflow {
            Event::Rejected("line too long: discarded")
        } else if self.buf.iter().any(|c| matches!(c, Cell::Invalid(_))) {
            Event::Rejected("line is not valid UTF-8: ignored")
        } else if self
            .buf
            .iter()
            .any(|c| matches!(c, Cell::Char(c) if c.is_control() && *c != '\t'))
        {
            Event::Rejected("line contains control characters: ignored")
        } else {
            Event::Line(
                self.buf
                    .iter()
                    .map(|c| match c {
                        Cell::Char(c) => *c,
                        Cell::Invalid(_) => unreachable!("rejected above"),
                    })
                    .collect(),
            )
        };
        self.reset();
        ev
    }
}

/// The key a CSI sequence (`ESC [ params final`) stands for.
fn csi_key(params: &[u8], fin: u8) -> Key {
    match (params, fin) {
        (_, b'D') => Key::Left,
        (_, b'C') => Key::Right,
        (_, b'H') | (b"1" | b"7", b'~') => Key::Home,
        (_, b'F') | (b"4" | b"8", b'~') => Key::End,
        (b"3", b'~') => Key::Delete,
        _ => Key::Ignored,
    }
}

/// Echo of one cell: the character itself if printable; nothing for what
/// the terminal would not show.
fn push_cell(out: &mut Vec<u8>, cell: Cell) {
    if let Cell::Char(c) = cell {
        if !c.is_control() {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
}

/// Move the terminal's cursor `n` columns left (backspaces: every terminal
/// honours them, unlike `ESC [ n D` on some).
fn move_left(out: &mut Vec<u8>, n: usize) {
    out.extend(std::iter::repeat_n(BS, n));
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

    /// What a terminal shows after the echo of `bytes`: a one-line screen
    /// with a cursor, as the echo drives it.
    fn screen(bytes: &[u8]) -> (String, usize) {
        let mut ed = LineEditor::new(256, true);
        let mut cells: Vec<char> = Vec::new();
        let mut at = 0;
        for &b in bytes {
            if let Some(Event::Echo(e)) = ed.feed(b) {
                for c in String::from_utf8(e).unwrap().chars() {
                    match c {
                        '\x08' => at -= 1,
                        c => {
                            if at == cells.len() {
                                cells.push(c);
                            } else {
                                cells[at] = c;
                            }
                            at += 1;
                        }
                    }
                }
            }
        }
        (cells.into_iter().collect::<String>().trim_end().into(), at)
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
        assert_eq!(
            lines(&mut ed, b"\xc3(\r\xe6\x97\r"),
            vec![
                Event::Rejected("line is not valid UTF-8: ignored"),
                Event::Rejected("line is not valid UTF-8: ignored")
            ]
        );
    }

    /// The public bug report: an ESC the terminal never showed, erased with
    /// DEL, leaves a valid line, and erasing it echoes nothing.
    #[test]
    fn an_erased_invisible_character_leaves_a_valid_line() {
        let typed = b"What is the capital of France\x1b\x7f?\r";
        let mut ed = LineEditor::new(64, true);
        assert_eq!(
            lines(&mut ed, typed),
            vec![Event::Line("What is the capital of France?".into())]
        );
        assert_eq!(
            screen(&typed[..typed.len() - 1]).0,
            "What is the capital of France?"
        );
        // Not erased, it still makes the line an error.
        assert_eq!(
            lines(&mut ed, b"ab\x1bx\r"),
            vec![Event::Rejected("line contains control characters: ignored")]
        );
    }

    #[test]
    fn arrow_keys_home_end_and_delete_edit_the_line() {
        // xterm (CSI), VT100 application mode (SS3) and Linux console keys.
        for (typed, want) in [
            (&b"helo\x1b[Dl\r"[..], "hello"),
            (b"helo\x1bODl\r", "hello"),
            (b"world\x1b[Hhello \r", "hello world"),
            (b"world\x01hello \r", "hello world"),
            (b"ab\x1b[1~>\x1b[4~<\r", ">ab<"),
            (b"abc\x1b[D\x1b[D\x1b[3~\r", "ac"),
            (b"abc\x1b[D\x1b[D\x1b[C\x7f\r", "ac"),
            (b"abc\x1b[A\x1b[B\r", "abc"),
            (b"x\x1b[1;5Dy\r", "yx"),
            (b"junk\x15ok\r", "ok"),
            ("h\u{e9}llo\x1b[D\x1b[D\x1b[D\x7fe\r".as_bytes(), "hello"),
        ] {
            let mut ed = LineEditor::new(64, true);
            assert_eq!(
                lines(&mut ed, typed),
                vec![Event::Line(want.into())],
                "{typed:?}"
            );
            // The terminal shows exactly the line, whatever the editing.
            assert_eq!(screen(&typed[..typed.len() - 1]).0, want, "{typed:?}");
        }
    }

    #[test]
    fn the_cursor_on_screen_follows_the_buffer() {
        let (shown, at) = screen(b"abcd\x1b[D\x1b[D");
        assert_eq!((shown.as_str(), at), ("abcd", 2));
        let (shown, at) = screen(b"abcd\x1b[D\x1b[DX");
        assert_eq!((shown.as_str(), at), ("abXcd", 3));
        let (shown, at) = screen(b"abcd\x1b[D\x1b[D\x7f");
        assert_eq!((shown.as_str(), at), ("acd", 1));
    }
}
