//! The voice that needs no download: espeak-ng's own formant synthesiser,
//! sentence by sentence like Piper. Robotic, but it works on any board with
//! `libespeak-ng1`, including a 32-bit OS, where ONNX Runtime has no build.

use std::time::Instant;

use super::sentences::Splitter;
use super::{espeak, Audio, SpeakOptions, TtsError, Voice};

/// espeak-ng speaking in `voice` (`en-us`, `en-gb`, ...).
pub struct EspeakVoice {
    voice: String,
    rate: u32,
}

impl EspeakVoice {
    /// # Errors
    /// `TtsError::Espeak` when the library cannot be loaded.
    pub fn new(voice: &str) -> Result<EspeakVoice, TtsError> {
        Ok(EspeakVoice {
            voice: voice.to_string(),
            rate: espeak::sample_rate()?,
        })
    }
}

impl Voice for EspeakVoice {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn speak_each(
        &mut self,
        text: &str,
        opts: &SpeakOptions,
        each: &mut dyn FnMut(&Audio) -> bool,
    ) -> Result<(f64, f64), TtsError> {
        let mut split = Splitter::default();
        let mut sentences = split.push(text);
        sentences.extend(split.finish());
        let wpm = (espeak::DEFAULT_WPM * opts.rate) as u32;
        let (mut audio_s, mut compute_s) = (0.0, 0.0);
        for (i, s) in sentences.iter().enumerate() {
            let t0 = Instant::now();
            let mut a = espeak::synthesize(s, &self.voice, wpm)?;
            if i > 0 {
                let gap = (opts.sentence_silence.max(0.0) * a.rate as f32) as usize;
                a.samples.splice(0..0, std::iter::repeat_n(0.0, gap));
            }
            compute_s += t0.elapsed().as_secs_f64();
            audio_s += a.seconds();
            if !each(&a) {
                break;
            }
        }
        Ok((audio_s, compute_s))
    }
}
