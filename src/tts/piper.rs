//! A Piper voice: its `.onnx.json` config and its VITS model on ONNX Runtime.
//!
//! Inputs (Piper's export, `piper/train/export_onnx.py`): `input` i64
//! [1, n] phoneme ids, `input_lengths` i64 [1], `scales` f32 [3] =
//! (noise_scale, length_scale, noise_w); output f32 [1, 1, 1, samples] at the
//! config's `audio.sample_rate`. Ids as piper-phonemize's
//! `phonemes_to_ids`: BOS `^`, then each phoneme's id followed by the pad
//! `_`, then EOS `$`; phonemes not in the map are skipped (and counted).
//! Each sentence is peak-normalised, as Piper does, and sentences are
//! joined with `sentence_silence` seconds of silence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use super::{Audio, TtsError, Voice};

#[derive(Debug, Clone, Deserialize)]
struct Config {
    audio: AudioConfig,
    espeak: EspeakConfig,
    inference: Inference,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Inference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// How to speak: `rate` multiplies the voice's speed (1 = as trained).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakOptions {
    pub rate: f32,
    /// Silence between sentences, in seconds (Piper's `--sentence-silence`).
    pub sentence_silence: f32,
    /// VITS's sampling noise (Piper's `--noise-scale`); `None`: the voice's
    /// `inference.noise_scale`. 0 makes the audio the same on every run.
    pub noise_scale: Option<f32>,
    /// Phoneme-length noise (Piper's `--noise-w-scale`); `None`: the voice's
    /// `inference.noise_w`. 0 makes the timing the same on every run.
    pub noise_w: Option<f32>,
}

impl Default for SpeakOptions {
    fn default() -> Self {
        SpeakOptions {
            rate: 1.0,
            sentence_silence: 0.2,
            noise_scale: None,
            noise_w: None,
        }
    }
}

/// A loaded Piper voice.
pub struct PiperVoice {
    session: Session,
    config: Config,
    path: PathBuf,
}

fn voice_err(path: &Path, msg: impl Into<String>) -> TtsError {
    TtsError::Voice {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl PiperVoice {
    /// Load `onnx` and its `<onnx>.json` config, with ONNX Runtime already
    /// started (`runtime::init`); `threads` for ONNX Runtime's intra-op pool.
    ///
    /// # Errors
    /// `TtsError::Io` when the config cannot be read, `TtsError::Voice` when
    /// it is not a single-speaker Piper config with `^ _ $` in its map,
    /// `TtsError::Runtime` when ONNX Runtime refuses the model.
    pub fn load(onnx: &Path, threads: usize) -> Result<PiperVoice, TtsError> {
        let json = PathBuf::from(format!("{}.json", onnx.display()));
        let text = std::fs::read_to_string(&json).map_err(|e| TtsError::Io {
            path: json.clone(),
            source: e,
        })?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| voice_err(&json, format!("not a Piper voice config: {e}")))?;
        for sym in ["^", "_", "$"] {
            if config.phoneme_id_map.get(sym).is_none_or(|v| v.is_empty()) {
                return Err(voice_err(
                    &json,
                    format!("no id for `{sym}` in phoneme_id_map"),
                ));
            }
        }
        if config.num_speakers > 1 {
            return Err(voice_err(
                &json,
                "multi-speaker voices are not supported yet",
            ));
        }
        if !(8_000..=48_000).contains(&config.audio.sample_rate) {
            return Err(voice_err(
                &json,
                format!("sample rate {}", config.audio.sample_rate),
            ));
        }
        let rt = |e: ort::Error| TtsError::Runtime {
            path: onnx.to_path_buf(),
            msg: "cannot load the voice".into(),
            source: Some(Box::new(e)),
        };
        let session = Session::builder()
            .map_err(rt)?
            .with_intra_threads(threads.max(1))
            .map_err(rt)?
            .commit_from_file(onnx)
            .map_err(rt)?;
        Ok(PiperVoice {
            session,
            config,
            path: onnx.to_path_buf(),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// The espeak-ng voice this Piper voice was trained on.
    pub fn espeak_voice(&self) -> &str {
        &self.config.espeak.voice
    }

    /// Phoneme ids for one sentence's phonemes, and how many phonemes the
    /// map did not know.
    pub fn ids(&self, phonemes: &str) -> (Vec<i64>, usize) {
        let map = &self.config.phoneme_id_map;
        let id = |s: &str| map[s][0];
        let (bos, pad, eos) = (id("^"), id("_"), id("$"));
        let mut ids = vec![bos, pad];
        let mut missing = 0;
        let mut buf = [0u8; 4];
        for c in phonemes.chars() {
            match map.get(&*c.encode_utf8(&mut buf)) {
                Some(v) => {
                    ids.extend_from_slice(v);
                    ids.push(pad);
                }
                None => missing += 1,
            }
        }
        ids.push(eos);
        (ids, missing)
    }

    /// Synthesise one sentence's phonemes.
    ///
    /// # Errors
    /// `TtsError::Runtime` when inference fails.
    pub fn synthesize_phonemes(
        &mut self,
        phonemes: &str,
        opts: &SpeakOptions,
    ) -> Result<Audio, TtsError> {
        let (ids, missing) = self.ids(phonemes);
        if missing > 0 {
            tracing::debug!(missing, "phonemes not in the voice's map were skipped");
        }
        let inf = self.config.inference;
        let rate = if opts.rate > 0.0 { opts.rate } else { 1.0 };
        let scales = vec![
            opts.noise_scale.unwrap_or(inf.noise_scale),
            inf.length_scale / rate,
            opts.noise_w.unwrap_or(inf.noise_w),
        ];
        let path = self.path.clone();
        let rt = |e: ort::Error| TtsError::Runtime {
            path: path.clone(),
            msg: "inference failed".into(),
            source: Some(Box::new(e)),
        };
        let n = ids.len();
        let sample_rate = self.sample_rate();
        let input = Tensor::from_array(([1usize, n], ids)).map_err(rt)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(rt)?;
        let scales = Tensor::from_array(([3usize], scales)).map_err(rt)?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales])
            .map_err(rt)?;
        let (_, samples) =
            outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| TtsError::Runtime {
                    path: path.clone(),
                    msg: "the voice's output is not f32 audio".into(),
                    source: Some(Box::new(e)),
                })?;
        let peak = samples.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(0.01);
        Ok(Audio {
            rate: sample_rate,
            samples: samples
                .iter()
                .map(|v| (v / peak).clamp(-1.0, 1.0))
                .collect(),
        })
    }

    /// Speak `text`: sentence by sentence, `each` called with every
    /// sentence's audio as soon as it is made (return false to stop early).
    /// Returns the real-time factor's parts: (audio seconds, compute seconds).
    ///
    /// # Errors
    /// As `espeak::phonemize` and `synthesize_phonemes`.
    pub fn speak(
        &mut self,
        text: &str,
        opts: &SpeakOptions,
        mut each: impl FnMut(&Audio) -> bool,
    ) -> Result<(f64, f64), TtsError> {
        let sentences = super::espeak::phonemize(text, &self.config.espeak.voice)?;
        super::speak_sentences(
            &sentences,
            opts,
            |s| self.synthesize_phonemes(s, opts),
            &mut each,
        )
    }
}

impl Voice for PiperVoice {
    fn sample_rate(&self) -> u32 {
        PiperVoice::sample_rate(self)
    }

    fn speak_each(
        &mut self,
        text: &str,
        opts: &SpeakOptions,
        each: &mut dyn FnMut(&Audio) -> bool,
    ) -> Result<(f64, f64), TtsError> {
        self.speak(text, opts, each)
    }
}
