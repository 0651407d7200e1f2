//! Cut a streamed answer into sentences as it arrives, so the first can be
//! spoken while the model is still writing the rest.
//!
//! A sentence ends at `.`, `!` or `?` followed by white space, or at a line
//! break; a number's decimal point ("3.5") or an abbreviation without a
//! following space does not end it. Markdown's emphasis and heading marks
//! are not spoken.

/// Pieces in, whole sentences out.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: String,
}

impl Splitter {
    /// Add a piece of the answer; returns the sentences it completed.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.buf.push_str(piece);
        let mut out = Vec::new();
        loop {
            let cut = self.buf.char_indices().find_map(|(i, c)| {
                let next = self.buf[i + c.len_utf8()..].chars().next();
                match c {
                    '\n' => Some(i + 1),
                    '.' | '!' | '?' if next.is_some_and(char::is_whitespace) => Some(i + 1),
                    _ => None,
                }
            });
            let Some(cut) = cut else { break };
            let s: String = self.buf.drain(..cut).collect();
            if let Some(s) = clean(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The end of the answer: what is left, if it holds words.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        clean(&s)
    }
}

/// The sentence as it should be spoken, or `None` when nothing is left.
fn clean(s: &str) -> Option<String> {
    let s: String = s
        .chars()
        .filter(|c| !matches!(c, '*' | '#' | '`' | '_'))
        .collect();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().any(char::is_alphanumeric).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_come_out_as_they_end() {
        let mut sp = Splitter::default();
        let mut got = Vec::new();
        for piece in [
            "The cap",
            "ital is **Paris**. It has 2.1 mil",
            "lion people! Wh",
            "y?",
            " Next\nline",
        ] {
            got.extend(sp.push(piece));
        }
        got.extend(sp.finish());
        assert_eq!(
            got,
            [
                "The capital is Paris.",
                "It has 2.1 million people!",
                "Why?",
                "Next",
                "line"
            ]
        );
    }

    #[test]
    fn nothing_to_say_is_nothing() {
        let mut sp = Splitter::default();
        assert!(sp.push("... \n --- \n").is_empty());
        assert_eq!(sp.finish(), None);
    }
}
