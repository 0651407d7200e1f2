//! Speaking: text → phonemes → audio, with a Piper voice.
//!
//! The stages follow the data: `espeak` turns text into IPA phonemes with
//! espeak-ng's library (as Piper does), one string per sentence; `piper`
//! maps them to the voice's phoneme ids and runs the VITS model on ONNX
//! Runtime (`runtime` loads the shared library from the store at run time).
//! Sentences are synthesised one at a time, so a caller can play the first
//! while the next is made; `playback` is where the audio goes (a speaker
//! through ALSA, or memory).

pub mod espeak;
pub mod fallback;
pub mod piper;
pub mod playback;
pub mod runtime;
pub mod sentences;
pub mod speaker;

use std::path::PathBuf;

pub use piper::{PiperVoice, SpeakOptions};

/// Why speaking failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("espeak-ng: {msg}")]
    Espeak {
        msg: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{path}: {msg}")]
    Voice { path: PathBuf, msg: String },
    #[error("ONNX Runtime ({path}): {msg}")]
    Runtime {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("audio playback: {0}")]
    Playback(String),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A voice: text in, audio out, sentence by sentence.
pub trait Voice: Send {
    /// Samples per second of what `speak_each` makes.
    fn sample_rate(&self) -> u32;
    /// Speak `text`, calling `each` with every sentence's audio as soon as
    /// it is made (return false to stop early). Returns (audio seconds,
    /// compute seconds).
    ///
    /// # Errors
    /// `TtsError` from phonemizing or synthesis.
    fn speak_each(
        &mut self,
        text: &str,
        opts: &SpeakOptions,
        each: &mut dyn FnMut(&Audio) -> bool,
    ) -> Result<(f64, f64), TtsError>;
}

/// Mono audio at `rate` Hz, samples in [-1, 1].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate.max(1) as f64
    }
}

/// Speak `sentences` one by one with `synth`: each after the first is
/// preceded by `opts.sentence_silence`, and `each` gets every sentence's
/// audio as soon as it is made (false stops). Returns (audio seconds,
/// compute seconds). The loop both voices share.
///
/// # Errors
/// What `synth` returns.
pub(crate) fn speak_sentences(
    sentences: &[String],
    opts: &SpeakOptions,
    mut synth: impl FnMut(&str) -> Result<Audio, TtsError>,
    each: &mut dyn FnMut(&Audio) -> bool,
) -> Result<(f64, f64), TtsError> {
    let (mut audio_s, mut compute_s) = (0.0, 0.0);
    for (i, sentence) in sentences.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let mut a = synth(sentence)?;
        if i > 0 {
            let gap = (opts.sentence_silence.max(0.0) * a.rate as f32) as usize;
            a.samples.splice(0..0, std::iter::repeat_n(0.0, gap));
        }
        compute_s += t0.elapsed().as_secs_f64();
        audio_s += a.seconds();
        tracing::debug!(%sentence, audio_s = a.seconds(), "spoke a sentence");
        if !each(&a) {
            break;
        }
    }
    Ok((audio_s, compute_s))
}
