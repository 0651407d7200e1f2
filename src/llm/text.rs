//! The output stream's text discipline: whole UTF-8 characters only, and stop
//! strings cut exactly.
//!
//! A byte-level BPE token can end in the middle of a multi-byte character
//! (CJK, emoji): such bytes are held back until the character is complete, so
//! a serial terminal never receives half a character. Likewise text that could
//! be the start of a stop string is held until it is clear whether it is one,
//! so the stop string itself never reaches the user.

/// Turns a stream of byte pieces into whole characters.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; returns the characters that are now complete. Invalid bytes
    /// become U+FFFD rather than being held forever.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("validated"));
                    match e.error_len() {
                        // Incomplete character at the end: hold it back.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }

    /// Bytes held back right now (at most 3).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// End of stream: whatever is left is an incomplete character.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Cuts the stream at the first stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Add text; returns what can be shown now and whether a stop string was
    /// reached (in which case the returned text ends right before it).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold the longest tail that is a proper prefix of some stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        (out, false)
    }

    /// End of stream: held text was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// An answer's text as its tokens arrive: token bytes → whole characters →
/// stop-string check, keeping what was shown. Used by `Session` (one answer
/// on its sink) and the batcher (several at once).
pub(crate) struct TextOut {
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// What has been shown so far.
    pub(crate) text: String,
    piece: Vec<u8>,
}

impl TextOut {
    pub(crate) fn new(stops: &[String]) -> Self {
        TextOut {
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(stops),
            text: String::new(),
            piece: Vec::with_capacity(32),
        }
    }

    /// `tok`'s text: what can be shown now (possibly empty: a partial
    /// character, or a possible stop string held back), and whether a stop
    /// string has ended the answer.
    pub(crate) fn token(
        &mut self,
        model: &llama_cpp_2::model::LlamaModel,
        tok: llama_cpp_2::token::LlamaToken,
    ) -> (String, bool) {
        self.piece.clear();
        model
            .vocab()
            .token_to_piece_into(tok, &mut self.piece, false, None);
        let chars = self.utf8.push(&self.piece);
        let (shown, stopped) = self.stop.push(&chars);
        self.text.push_str(&shown);
        (shown, stopped)
    }

    /// End of a normal answer: the held-back text. Bytes of a character the
    /// answer stopped in the middle of are dropped, not shown as U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let dropped = self.utf8.held();
        if dropped > 0 {
            tracing::debug!(bytes = dropped, "answer ended inside a character");
        }
        let shown = self.stop.finish();
        self.text.push_str(&shown);
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_split_characters() {
        let bytes = "aé日😀".as_bytes();
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for b in bytes {
            let piece = s.push(std::slice::from_ref(b));
            out.push_str(&piece);
            assert!(s.held() <= 3);
        }
        out.push_str(&s.finish());
        assert_eq!(out, "aé日😀");
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[0xe6, 0x97]), "");
        assert_eq!(s.push(&[0xa5, b'x']), "日x");
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn stop_strings_are_cut() {
        let mut m = StopMatcher::new(&["\nUser:".to_string()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" there\nUs"), (" there".into(), false));
        assert_eq!(m.push("er: next"), ("".into(), true));
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("aE"), ("a".into(), false));
        assert_eq!(m.push("x"), ("Ex".into(), false));
        assert_eq!(m.finish(), "");
    }
}
