//! whisper.cpp through whisper-rs: a validated model file in, an utterance's
//! `Transcript` out.
//!
//! The model file is walked before whisper.cpp sees it (header, filterbank,
//! vocabulary, every tensor header and its data within the file), because
//! whisper.cpp trusts the sizes it reads and a cut-off file makes it allocate
//! garbage. Decoding is greedy with timestamps off (the assistant wants text,
//! and a Pi wants speed); segments whisper itself doubts (`guards`:
//! no-speech probability, log-probability, compression ratio) are dropped,
//! a last guard after the voice detectors against words invented from noise.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::convert::{Hparams, GGML_MAGIC};
use super::{guards, Pcm16k, SpeechError};

/// Text of one utterance, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub audio_s: f64,
    pub compute_s: f64,
}

impl Transcript {
    /// Compute time over audio time: below 1 is faster than real time.
    pub fn rtf(&self) -> f64 {
        if self.audio_s > 0.0 {
            self.compute_s / self.audio_s
        } else {
            0.0
        }
    }
}

pub struct Transcriber {
    ctx: WhisperContext,
    path: PathBuf,
    pub hparams: Hparams,
    threads: usize,
    language: String,
    /// Encode only the part of the 30 s window the utterance fills.
    fit_audio_ctx: bool,
}

fn io_err(path: &Path, source: std::io::Error) -> SpeechError {
    SpeechError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn model_err(path: &Path, msg: impl Into<String>) -> SpeechError {
    SpeechError::Model {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Whether `path` starts with whisper.cpp's magic (not proof it is valid).
pub fn is_whisper_file(path: &Path) -> bool {
    let mut b = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok_and(|()| u32::from_le_bytes(b) == GGML_MAGIC)
}

/// Walk a whisper.cpp model file; returns its hyper-parameters.
///
/// Layout (whisper.cpp `whisper_model_load`): magic, 11 i32 hyper-parameters,
/// the mel filterbank (`n_mels`×201 f32), the vocabulary (count, then
/// length-prefixed tokens), then tensors (n_dims, name length, type, dims,
/// name, data) to the end of the file.
///
/// # Errors
/// `SpeechError::Io` when the file cannot be read, `SpeechError::Model`
/// naming what is wrong (truncation, implausible sizes, wrong tensor count).
pub fn check_model(path: &Path) -> Result<Hparams, SpeechError> {
    let mut w = Walk::open(path)?;
    let magic = w.i32s(1, "magic")?[0] as u32;
    if magic != GGML_MAGIC {
        return Err(w.bad(format!("not a whisper.cpp model (magic {magic:#x}); CTranslate2 models convert with `ferrite models convert-whisper`")));
    }
    let hp = Hparams::from_array(w.i32s(11, "hyper-parameters")?.try_into().expect("11"));
    if !plausible(&hp) {
        return Err(w.bad(format!("implausible hyper-parameters {hp:?}")));
    }
    w.skip_mel(hp.n_mels)?;
    w.skip_vocab(hp.n_vocab)?;
    let expected = 11 + hp.n_audio_layer * 15 + hp.n_text_layer * 24;
    let n = w.count_tensors()?;
    if n != expected {
        return Err(w.bad(format!(
            "{n} tensors, a Whisper model of this shape has {expected}"
        )));
    }
    Ok(hp)
}

fn in_range(v: i32, lo: i32, hi: i32) -> bool {
    (lo..=hi).contains(&v)
}

/// The hyper-parameters of a Whisper model from tiny to large-v3.
fn plausible(hp: &Hparams) -> bool {
    in_range(hp.n_vocab, 51864, 51866)
        && in_range(hp.n_audio_ctx, 1, 1500)
        && in_range(hp.n_audio_state, 64, 4096)
        && in_range(hp.n_audio_head, 1, 64)
        && in_range(hp.n_audio_layer, 1, 64)
        && in_range(hp.n_text_ctx, 1, 448)
        && hp.n_text_state == hp.n_audio_state
        && in_range(hp.n_text_head, 1, 64)
        && in_range(hp.n_text_layer, 1, 64)
        && in_range(hp.n_mels, 1, 256)
        && in_range(hp.ftype, 0, 1)
}

/// A cursor over a model file that knows the file's length, so every size
/// read from the file is checked against it before it is used.
struct Walk<'a> {
    r: BufReader<std::fs::File>,
    path: &'a Path,
    len: u64,
}

impl<'a> Walk<'a> {
    fn open(path: &'a Path) -> Result<Self, SpeechError> {
        let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let len = f.metadata().map_err(|e| io_err(path, e))?.len();
        Ok(Walk {
            r: BufReader::new(f),
            path,
            len,
        })
    }

    fn bad(&self, msg: impl Into<String>) -> SpeechError {
        model_err(self.path, msg)
    }

    fn io(&self, e: std::io::Error) -> SpeechError {
        io_err(self.path, e)
    }

    fn cut(&self, what: &str) -> SpeechError {
        let len = self.len;
        self.bad(format!("truncated or not a whisper.cpp model: {what} runs past the end ({len} bytes); re-pull or re-convert it"))
    }

    /// `n` little-endian i32s.
    fn i32s(&mut self, n: usize, what: &str) -> Result<Vec<i32>, SpeechError> {
        let mut b = vec![0u8; 4 * n];
        self.r.read_exact(&mut b).map_err(|_| self.cut(what))?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn skip(&mut self, n: i64) -> Result<(), SpeechError> {
        self.r.seek_relative(n).map_err(|e| self.io(e))
    }

    fn skip_mel(&mut self, n_mels: i32) -> Result<(), SpeechError> {
        let mel = self.i32s(2, "mel filterbank")?;
        if mel[0] != n_mels || mel[1] != 201 {
            return Err(self.bad(format!(
                "mel filterbank is {}×{}, expected {n_mels}×201",
                mel[0], mel[1]
            )));
        }
        self.skip(4 * 201 * n_mels as i64)
    }

    fn skip_vocab(&mut self, n_vocab: i32) -> Result<(), SpeechError> {
        let n_tokens = self.i32s(1, "vocabulary")?[0];
        if !in_range(n_tokens, 0, n_vocab) {
            return Err(self.bad(format!("vocabulary of {n_tokens} tokens")));
        }
        for _ in 0..n_tokens {
            let l = self.i32s(1, "vocabulary")?[0];
            if !in_range(l, 0, 1024) {
                return Err(self.bad(format!("vocabulary entry of {l} bytes")));
            }
            self.skip(l as i64)?;
        }
        Ok(())
    }

    /// Tensors from here to the end of the file, each one's data checked to
    /// lie within the file.
    fn count_tensors(&mut self) -> Result<i32, SpeechError> {
        let mut n = 0;
        loop {
            let pos = self.r.stream_position().map_err(|e| self.io(e))?;
            if pos == self.len {
                return Ok(n);
            }
            if pos > self.len {
                return Err(self.cut("the vocabulary"));
            }
            self.skip_tensor(pos)?;
            n += 1;
        }
    }

    fn skip_tensor(&mut self, pos: u64) -> Result<(), SpeechError> {
        let h = self.i32s(3, "a tensor header")?;
        let (n_dims, name_len, ttype) = (h[0], h[1], h[2]);
        if !in_range(n_dims, 1, 4) || !in_range(name_len, 1, 256) || !in_range(ttype, 0, 1) {
            return Err(self.bad(format!("bad tensor header at byte {pos}")));
        }
        let dims = self.i32s(n_dims as usize, "a tensor header")?;
        if dims.iter().any(|d| *d <= 0) {
            return Err(self.bad(format!("bad tensor shape {dims:?} at byte {pos}")));
        }
        let mut name = vec![0u8; name_len as usize];
        self.r
            .read_exact(&mut name)
            .map_err(|_| self.cut("a tensor name"))?;
        // Checked: four dimensions up to 2^31 overflow u64, and a wrapped
        // size would pass the bounds check below.
        let bytes = dims
            .iter()
            .try_fold(if ttype == 0 { 4u64 } else { 2 }, |a, d| {
                a.checked_mul(*d as u64)
            });
        let here = self.r.stream_position().map_err(|e| self.io(e))?;
        let end = bytes.and_then(|b| here.checked_add(b)).unwrap_or(u64::MAX);
        if end > self.len {
            return Err(self.cut(&format!("tensor `{}`", String::from_utf8_lossy(&name))));
        }
        self.r.seek(SeekFrom::Start(end)).map_err(|e| self.io(e))?;
        Ok(())
    }
}

impl Transcriber {
    /// Load a whisper.cpp model (validated first).
    pub fn load(path: &Path, threads: usize, language: &str) -> Result<Transcriber, SpeechError> {
        let hparams = check_model(path)?;
        whisper_rs::install_logging_hooks();
        let mut params = WhisperContextParameters::default();
        params.use_gpu(cfg!(feature = "cuda"));
        // whisper.cpp's own default (whisper-cli), off in whisper-rs: measured
        // 20% faster on the CPU here; only DTW timestamps need it off.
        params.flash_attn(true);
        let ctx = WhisperContext::new_with_params(path, params)
            .map_err(|e| model_err(path, format!("whisper.cpp could not load it: {e}")))?;
        let multilingual = hparams.n_vocab >= 51865;
        if !multilingual && language != "en" && language != "auto" {
            return Err(SpeechError::Language(format!(
                "{} is an English-only model; --language {language} needs a multilingual one (whisper-base)",
                path.display()
            )));
        }
        Ok(Transcriber {
            ctx,
            path: path.to_path_buf(),
            hparams,
            threads: threads.max(1),
            language: language.to_string(),
            fit_audio_ctx: false,
        })
    }

    /// Encode only as much of whisper's 30 s window as each utterance fills
    /// (whisper.cpp's `audio_ctx`, set per utterance: 50 encoder frames a
    /// second plus 1 s, rounded up to 64, and never under 512 = 10.24 s, the
    /// value whisper.cpp's stream example uses). Measured on the test
    /// corpus with tiny.en: the same WER (8.6%), speech-to-text of a 2.3 s
    /// question 595 → 204 ms on 2 x86 threads. Under 512 frames the WER
    /// rose to 64% (whisper was trained on full windows).
    pub fn fit_audio_ctx(mut self, on: bool) -> Transcriber {
        self.fit_audio_ctx = on;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transcribe one utterance (at most 30 s is one whisper window; longer
    /// audio is windowed by whisper.cpp).
    pub fn transcribe(&self, pcm: &Pcm16k) -> Result<Transcript, SpeechError> {
        let start = Instant::now();
        let span = tracing::info_span!("stt", audio_s = pcm.seconds());
        let _g = span.enter();
        let mut state = self
            .ctx
            .create_state()
            .map_err(|source| SpeechError::Whisper {
                what: "cannot create a state",
                source,
            })?;
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(self.threads as i32);
        p.set_language(Some(if self.language == "auto" {
            "auto"
        } else {
            &self.language
        }));
        p.set_no_timestamps(true);
        p.set_print_special(false);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_suppress_blank(true);
        p.set_suppress_nst(true);
        p.set_no_context(true);
        if self.fit_audio_ctx {
            let frames = ((pcm.0.len().div_ceil(320) + 50).div_ceil(64) * 64).max(512);
            let full = self.hparams.n_audio_ctx.max(1) as usize;
            if frames < full {
                p.set_audio_ctx(frames as i32);
            }
        }
        // whisper needs at least one second; pad short clips with silence
        // (a copy only then).
        let min_len = super::SAMPLE_RATE as usize + 1600;
        let audio: std::borrow::Cow<[f32]> = if pcm.0.len() < min_len {
            let mut a = pcm.0.clone();
            a.resize(min_len, 0.0);
            a.into()
        } else {
            pcm.0.as_slice().into()
        };
        state
            .full(p, &audio)
            .map_err(|source| SpeechError::Whisper {
                what: "transcription failed",
                source,
            })?;
        let text = self.kept_text(&state)?;
        let text = clean(&text);
        let t = Transcript {
            text,
            audio_s: pcm.seconds(),
            compute_s: start.elapsed().as_secs_f64(),
        };
        tracing::info!(rtf = t.rtf(), chars = t.text.len(), "transcribed");
        Ok(t)
    }

    /// The text of the segments `guards` keeps.
    fn kept_text(&self, state: &whisper_rs::WhisperState) -> Result<String, SpeechError> {
        let eot = self.ctx.token_eot();
        let mut text = String::new();
        for seg in state.as_iter() {
            let s = seg.to_str_lossy().map_err(|source| SpeechError::Whisper {
                what: "a segment's text",
                source,
            })?;
            let logprobs: Vec<f32> = (0..seg.n_tokens())
                .filter_map(|i| seg.get_token(i))
                .map(|t| t.token_data())
                .filter(|d| d.id < eot)
                .map(|d| d.plog)
                .collect();
            let scores = guards::Scores {
                no_speech: seg.no_speech_probability(),
                avg_logprob: logprobs.iter().sum::<f32>() / logprobs.len().max(1) as f32,
                compression_ratio: guards::compression_ratio(s.trim()),
            };
            let verdict = guards::judge(&scores);
            tracing::debug!(?scores, ?verdict, text = %s, "segment");
            if verdict != guards::Verdict::Keep {
                tracing::info!(?verdict, ?scores, "dropped a segment whisper itself doubts");
                continue;
            }
            text.push_str(&s);
        }
        Ok(text)
    }
}

/// Trim, and drop bracketed non-speech annotations whisper emits for
/// sounds (`[BLANK_AUDIO]`, `(music)`).
fn clean(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn annotations_are_not_words() {
        assert_eq!(clean(" [BLANK_AUDIO] "), "");
        assert_eq!(clean(" Hello (coughs) world. "), "Hello world.");
    }
}
