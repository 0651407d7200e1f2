//! WAV files in: any rate, any channel count, integer or float PCM, down-mixed
//! and resampled to `Pcm16k`.
//!
//! The container is walked by `riff` (streamed sizes, extra and odd-sized
//! chunks, as sox and Python's `wave` read them); hound decodes the samples
//! from an exactly-sized copy of the header, so its format checks (PCM 8–32
//! bit, float 32, WAVE_FORMAT_EXTENSIBLE) still apply. Checked before use: a
//! data chunk that holds the samples its header promises (a cut-off file
//! says so instead of yielding a short clip), and at least one sample.

use std::path::Path;

use super::resample::{downmix, to_16k};
use super::{Pcm16k, SpeechError};

fn wav_err(path: &Path, msg: impl Into<String>) -> SpeechError {
    SpeechError::Wav {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A WAV file as it is: interleaved samples in [-1, 1], its rate and channels.
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

impl Wav {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.channels.max(1) as f64 / self.rate.max(1) as f64
    }

    pub fn to_pcm16k(&self) -> Pcm16k {
        to_16k(&downmix(&self.samples, self.channels as usize), self.rate)
    }
}

pub fn read(path: &Path) -> Result<Wav, SpeechError> {
    let meta = std::fs::metadata(path).map_err(|e| SpeechError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if meta.len() == 0 {
        return Err(wav_err(path, "empty file (0 bytes): not a WAV file"));
    }
    let bytes = std::fs::read(path).map_err(|e| SpeechError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(&bytes, path)
}

/// A WAV file already in memory (an upload), checked as `read` checks a
/// file; `name` is what errors call it.
///
/// # Errors
/// `SpeechError::Wav` when the bytes are not a readable, complete WAV file.
pub fn parse(bytes: &[u8], name: &Path) -> Result<Wav, SpeechError> {
    let path = name;
    if bytes.is_empty() {
        return Err(wav_err(path, "empty file (0 bytes): not a WAV file"));
    }
    let layout = super::riff::walk(bytes).map_err(|e| wav_err(path, e.to_string()))?;
    if layout.streamed {
        tracing::debug!(
            bytes = layout.data.len(),
            "streamed WAV: samples run to the end of the file"
        );
    }
    let fmt = &bytes[layout.fmt.clone()];
    let header = super::riff::canonical_header(fmt, layout.data.len());
    let exact = std::io::Read::chain(&header[..], &bytes[layout.data.clone()]);
    let reader = hound::WavReader::new(exact)
        .map_err(|e| wav_err(path, format!("not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate < 1000 || spec.sample_rate > 384_000 {
        return Err(wav_err(
            path,
            format!(
                "unsupported format: {} channels at {} Hz",
                spec.channels, spec.sample_rate
            ),
        ));
    }
    let promised = reader.len() as usize;
    let samples: Result<Vec<f32>, hound::Error> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect()
        }
    };
    let samples = samples.map_err(|e| {
        wav_err(
            path,
            format!("truncated or corrupt: the header promises {promised} samples ({e})"),
        )
    })?;
    if samples.len() < promised {
        return Err(wav_err(
            path,
            format!(
                "truncated: the header promises {promised} samples, the file holds {}",
                samples.len()
            ),
        ));
    }
    if samples.is_empty() {
        return Err(wav_err(path, "no audio: the WAV file holds 0 samples"));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(wav_err(
            path,
            format!(
                "corrupt: sample {i} is {} (a float WAV holds finite numbers)",
                samples[i]
            ),
        ));
    }
    Ok(Wav {
        rate: spec.sample_rate,
        channels: spec.channels,
        samples,
    })
}

/// Write 16 kHz mono PCM as a 16-bit WAV (recordings, test fixtures),
/// atomically.
pub fn write_16k(path: &Path, pcm: &Pcm16k) -> Result<(), SpeechError> {
    write_mono(path, super::SAMPLE_RATE, &pcm.0)
}

/// Write mono samples in [-1, 1] at `rate` Hz as a 16-bit WAV, atomically
/// (temp file, fsync, rename).
///
/// # Errors
/// `SpeechError::Io` when the file cannot be written.
pub fn write_mono(path: &Path, rate: u32, samples: &[f32]) -> Result<(), SpeechError> {
    let bytes = encode_mono(rate, samples).map_err(|e| wav_err(path, e.to_string()))?;
    crate::gguf::write_atomic(path, |w| std::io::Write::write_all(w, &bytes)).map_err(|e| {
        SpeechError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// Mono samples in [-1, 1] at `rate` Hz as the bytes of a 16-bit PCM WAV
/// file (RIFF, `fmt `, `data`), values clamped and rounded.
///
/// # Errors
/// hound's, when the audio is too long for a RIFF size (4 GiB).
pub fn encode_mono(rate: u32, samples: &[f32]) -> Result<Vec<u8>, hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut buf, spec)?;
    for &s in samples {
        w.write_sample(to_i16(s))?;
    }
    w.finalize()?;
    Ok(buf.into_inner())
}

/// A sample in [-1, 1] as 16-bit PCM (clamped, rounded).
pub fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}
