//! Speech: microphone or WAV → 16 kHz mono PCM → utterances → text.
//!
//! The stages follow the data: `wav` and `capture` produce audio, `resample`
//! brings it to whisper's 16 kHz mono (`Pcm16k`), `vad` cuts it into
//! utterances (and keeps silence and noise away from whisper, which invents
//! words for them), `neural_vad` (Silero) confirms each holds speech,
//! `whisper` turns an utterance into a `Transcript` with whisper.cpp. `riff`
//! walks WAV containers for `wav`. `ct2` and `convert` turn the CTranslate2
//! Whisper models that registries ship into whisper.cpp's own format, and
//! `silero` does the same for Silero VAD's safetensors. whisper.cpp links the same
//! ggml as llama.cpp (see boards/ggml.sh), so both run in one process.

pub mod capture;
pub mod convert;
pub mod ct2;
pub mod guards;
pub mod listen;
pub mod neural_vad;
pub mod resample;
pub mod riff;
pub mod silero;
pub mod vad;
pub mod wav;
pub mod whisper;

use std::path::PathBuf;

pub use capture::{AudioSource, WavSource};
pub use convert::convert_whisper;
pub use vad::{Vad, VadConfig};
pub use whisper::{Transcriber, Transcript};

/// The store's converter for models pulled in another format: Whisper from
/// CTranslate2, Silero VAD from safetensors (`models::Converter`).
pub fn converter() -> Box<crate::models::Converter> {
    Box::new(|kind, src, dst| {
        match kind {
            crate::models::ModelKind::Vad => silero::convert_silero(src, dst).map(drop),
            _ => convert_whisper(src, dst).map(drop),
        }
        .map_err(Into::into)
    })
}

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Mono f32 samples in [-1, 1] at 16 kHz: what whisper.cpp takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pcm16k(pub Vec<f32>);

impl Pcm16k {
    pub fn seconds(&self) -> f64 {
        self.0.len() as f64 / SAMPLE_RATE as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("{path}: {msg}")]
    Wav { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Ct2 { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("{0}")]
    Language(String),
    #[error("whisper.cpp: {what}")]
    Whisper {
        what: &'static str,
        #[source]
        source: whisper_rs::WhisperError,
    },
    #[error("audio capture: {0}")]
    Capture(String),
    #[error("audio capture")]
    Alsa(#[source] crate::alsa::AlsaError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
