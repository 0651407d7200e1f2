//! The voice that needs no download: espeak-ng's own formant synthesiser,
//! sentence by sentence like Piper. Robotic, but it works on any board with
//! `libespeak-ng1`, including a 32-bit OS, where ONNX Runtime has no build.

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
        let voice = &self.voice;
        super::speak_sentences(
            &sentences,
            opts,
            |s| espeak::synthesize(s, voice, wpm),
            each,
        )
    }
}
