//! Whisper's own guards against invented words, after the voice detectors:
//! the thresholds openai-whisper's `transcribe.py` uses to decide that a
//! segment is silence or a failed decode.
//!
//! - no-speech probability above 0.6: silence. (openai-whisper also asks for
//!   an average log-probability under -1 before it calls a segment silent;
//!   ferrite drops on the probability alone, as it did before these guards:
//!   an assistant would rather miss a word than answer noise.)
//! - compression ratio (text bytes over their zlib-compressed bytes) above
//!   2.4 *and* average log-probability under -1: a repetitive loop the model
//!   was not sure of ("you you you you ..."), which openai-whisper retries at
//!   a higher temperature; ferrite, decoding greedily once, drops it.

use std::io::Write;

/// Above this no-speech probability a segment is silence.
pub const NO_SPEECH: f32 = 0.6;
/// Under this average log-probability (nats per token) a segment is unsure.
pub const LOGPROB: f32 = -1.0;
/// Above this compression ratio a segment is repetitive.
pub const COMPRESSION: f32 = 2.4;

/// What whisper says about one segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub no_speech: f32,
    /// Mean log-probability of the segment's text tokens.
    pub avg_logprob: f32,
    pub compression_ratio: f32,
}

/// Keep a segment, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Silence,
    Garbled,
}

pub fn judge(s: &Scores) -> Verdict {
    if s.no_speech > NO_SPEECH {
        Verdict::Silence
    } else if s.compression_ratio > COMPRESSION && s.avg_logprob < LOGPROB {
        Verdict::Garbled
    } else {
        Verdict::Keep
    }
}

/// Bytes of `text` over the bytes zlib compresses them to (openai-whisper's
/// `get_compression_ratio`); 0 for empty text.
pub fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let packed = z
        .write_all(text.as_bytes())
        .and_then(|()| z.finish())
        .map_or(text.len(), |v| v.len());
    text.len() as f32 / packed.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_compress_and_sentences_do_not() {
        assert!(compression_ratio(&"you ".repeat(40)) > 5.0);
        assert!(compression_ratio("What is the capital of France?") < 1.5);
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn verdicts() {
        let s = |no_speech, avg_logprob, compression_ratio| Scores {
            no_speech,
            avg_logprob,
            compression_ratio,
        };
        assert_eq!(judge(&s(0.9, -0.2, 1.0)), Verdict::Silence);
        assert_eq!(judge(&s(0.1, -1.5, 3.0)), Verdict::Garbled);
        assert_eq!(
            judge(&s(0.1, -0.3, 3.0)),
            Verdict::Keep,
            "a sure repetition"
        );
        assert_eq!(
            judge(&s(0.1, -1.5, 1.2)),
            Verdict::Keep,
            "an unsure sentence"
        );
    }
}
