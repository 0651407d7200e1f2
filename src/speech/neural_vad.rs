//! The learned voice detector: Silero VAD run by whisper.cpp's own VAD
//! (`whisper_vad_*`, through whisper-rs), on the shared ggml.
//!
//! Used as a gate after the spectral detector: the spectral detector cuts a
//! stream into candidate utterances cheaply and without a model; Silero then
//! says how much of each is speech, and a candidate with less than
//! `min_speech_ms` of it (brown noise, a fan, music, a tone) never reaches
//! whisper. That keeps streaming simple (whisper.cpp resets Silero's LSTM
//! state on every call, so it is called once per candidate, not per frame).
//!
//! The model file is walked before whisper.cpp sees it: its loader trusts
//! the sizes it reads.

use std::io::Read;
use std::path::{Path, PathBuf};

use whisper_rs::{WhisperVadContext, WhisperVadContextParams};

use super::silero::WINDOW;
use super::{Pcm16k, SpeechError, SAMPLE_RATE};

/// Probability at or above which a 32 ms window is speech (Silero's and
/// whisper.cpp's default threshold).
pub const THRESHOLD: f32 = 0.5;

/// Candidates with less speech than this never reach whisper (whisper.cpp's
/// `min_speech_duration_ms` default).
pub const MIN_SPEECH_MS: u32 = 250;

/// Silero VAD, loaded.
pub struct SileroVad {
    ctx: WhisperVadContext,
    path: PathBuf,
}

fn bad(path: &Path, msg: impl Into<String>) -> SpeechError {
    SpeechError::Model {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Walk a whisper.cpp VAD model file: header, then every tensor header and
/// its data within the file; the 15 Silero tensors must all be there.
///
/// # Errors
/// `SpeechError::Io` when the file cannot be read, `SpeechError::Model`
/// naming what is wrong (magic, header, a tensor past the end, a missing
/// tensor).
pub fn check_model(path: &Path) -> Result<(), SpeechError> {
    let mut b = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut b))
        .map_err(|e| SpeechError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    let tensors_at = check_header(&b).map_err(|m| bad(path, m))?;
    let n = count_tensors(&b, tensors_at).map_err(|m| bad(path, m))?;
    if n != 15 {
        return Err(bad(path, format!("{n} tensors, Silero has 15")));
    }
    Ok(())
}

/// The little-endian i32 at byte `at`, if the file holds it.
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| i32::from_le_bytes(s.try_into().expect("4 bytes")))
}

/// Check magic, model type and hyper-parameters; returns where the tensors
/// start.
fn check_header(b: &[u8]) -> Result<usize, String> {
    if i32_at(b, 0).ok_or("truncated in the magic")? as u32 != super::convert::GGML_MAGIC {
        return Err("not a whisper.cpp VAD model (bad magic)".into());
    }
    let type_len = i32_at(b, 4).ok_or("truncated in the model type")?;
    if !(1..=64).contains(&type_len) {
        return Err(format!("model type length {type_len}"));
    }
    let at = 8 + type_len as usize;
    let ty = b.get(8..at).ok_or("truncated in the model type")?;
    if ty != b"silero-16k" {
        return Err(format!(
            "model type `{}`, not silero-16k",
            String::from_utf8_lossy(ty)
        ));
    }
    // version (3), window, context, n_layers, 4 × 3 layer ints, 4 sizes.
    let ints: Vec<i32> = (0..22)
        .map(|i| i32_at(b, at + 4 * i))
        .collect::<Option<_>>()
        .ok_or("truncated in the hyper-parameters")?;
    // Exactly what `silero::convert_silero` writes: whisper.cpp sizes its
    // tensors from these, so anything else could make it allocate absurdly.
    let want = super::silero::HEADER;
    if ints[3..] != want[..] {
        return Err(format!(
            "hyper-parameters {:?}, not Silero 16 kHz's {want:?}",
            &ints[3..]
        ));
    }
    Ok(at + 4 * 22)
}

/// Walk the tensors from `at` to the end of the file, each within it.
fn count_tensors(b: &[u8], mut at: usize) -> Result<usize, String> {
    let mut n_tensors = 0;
    while at < b.len() {
        let h = |i: usize| i32_at(b, at + 4 * i);
        let (Some(n_dims), Some(name_len), Some(ttype)) = (h(0), h(1), h(2)) else {
            return Err(format!("truncated tensor header at byte {at}"));
        };
        if !(1..=4).contains(&n_dims) || !(1..=128).contains(&name_len) || !(0..=1).contains(&ttype)
        {
            return Err(format!("bad tensor header at byte {at}"));
        }
        let mut n: u64 = 1;
        for i in 0..n_dims as usize {
            let d = h(3 + i).ok_or("truncated tensor dims")?;
            if !(1..=1 << 20).contains(&d) {
                return Err(format!("tensor dim {d} at byte {at}"));
            }
            n = n.checked_mul(d as u64).ok_or("tensor size overflows")?;
        }
        let data_at = at + 12 + 4 * n_dims as usize + name_len as usize;
        let end = (data_at as u64).saturating_add(n * if ttype == 1 { 2 } else { 4 });
        if end > b.len() as u64 {
            return Err(format!(
                "truncated: a tensor at byte {at} runs past the end"
            ));
        }
        n_tensors += 1;
        at = end as usize;
    }
    Ok(n_tensors)
}

impl SileroVad {
    /// Load a checked model; `threads` for ggml (1 is plenty: a window
    /// costs well under a millisecond).
    ///
    /// # Errors
    /// As `check_model`, and `SpeechError::Model` when whisper.cpp refuses it.
    pub fn load(path: &Path, threads: usize) -> Result<SileroVad, SpeechError> {
        check_model(path)?;
        // whisper.cpp's log lines go to tracing, not to stderr.
        whisper_rs::install_logging_hooks();
        let mut p = WhisperVadContextParams::new();
        p.set_n_threads(threads.max(1) as i32);
        p.set_use_gpu(false);
        let s = path
            .to_str()
            .ok_or_else(|| bad(path, "the path is not UTF-8"))?;
        let ctx = WhisperVadContext::new(s, p)
            .map_err(|_| bad(path, "whisper.cpp could not load the VAD model"))?;
        Ok(SileroVad {
            ctx,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Speech probability of each 32 ms window of `pcm` (the last one zero
    /// padded), in [0, 1].
    ///
    /// # Errors
    /// `SpeechError::Model` when whisper.cpp's VAD fails.
    pub fn probabilities(&mut self, pcm: &Pcm16k) -> Result<Vec<f32>, SpeechError> {
        if pcm.0.is_empty() {
            return Ok(Vec::new());
        }
        self.ctx
            .detect_speech(&pcm.0)
            .map_err(|_| bad(&self.path, "whisper.cpp's VAD failed"))?;
        Ok(self.ctx.probabilities().to_vec())
    }

    /// Milliseconds of `pcm` that Silero calls speech.
    ///
    /// # Errors
    /// As `probabilities`.
    pub fn speech_ms(&mut self, pcm: &Pcm16k) -> Result<u32, SpeechError> {
        let speech = self
            .probabilities(pcm)?
            .iter()
            .filter(|&&p| p >= THRESHOLD)
            .count();
        Ok((speech * WINDOW * 1000 / SAMPLE_RATE as usize) as u32)
    }
}

/// The gate between the spectral detector and whisper.
pub struct Gate {
    vad: SileroVad,
    pub min_speech_ms: u32,
}

impl Gate {
    pub fn new(vad: SileroVad) -> Gate {
        Gate {
            vad,
            min_speech_ms: MIN_SPEECH_MS,
        }
    }

    /// Whether `pcm` holds at least `min_speech_ms` of speech; logs the
    /// measure either way.
    ///
    /// # Errors
    /// As `SileroVad::probabilities`.
    pub fn holds_speech(&mut self, pcm: &Pcm16k) -> Result<bool, SpeechError> {
        let ms = self.vad.speech_ms(pcm)?;
        let ok = ms >= self.min_speech_ms;
        tracing::debug!(
            speech_ms = ms,
            audio_s = pcm.seconds(),
            passed = ok,
            "silero gate"
        );
        if !ok {
            tracing::info!(
                speech_ms = ms,
                audio_s = pcm.seconds(),
                "not speech (silero): dropped before whisper"
            );
        }
        Ok(ok)
    }
}
