//! Voice activity detection: cuts a 16 kHz stream into utterances.
//!
//! Energy alone cannot tell speech from a fan or white noise, and whisper
//! turns both into invented words ("Thank you."), so a 20 ms frame counts as
//! speech only when it is loud enough (above an absolute floor *and* a margin
//! over the tracked noise floor) and not noise-like (spectral flatness over
//! 250 Hz–4 kHz below a limit: voiced speech is harmonic, noise is flat). An
//! utterance starts after `min_speech_ms` of mostly-speech frames, keeps
//! `pre_roll_ms` before that, and ends after `hangover_ms` without speech.
//! Speech that runs on to `max_utterance_ms` (under whisper's 30 s window) is
//! cut at the quietest 60 ms of its last `cut_search_ms`, a gap between
//! words, and goes on in the next utterance: a cut at the limit itself split
//! a word, and whisper dropped both halves.

use std::collections::VecDeque;
use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::{Pcm16k, SAMPLE_RATE};

const FRAME: usize = 320; // 20 ms
const FFT_LEN: usize = 512;
const BIN_LO: usize = 8; // 250 Hz at 31.25 Hz per bin
const BIN_HI: usize = 128; // 4 kHz

/// Thresholds; the defaults suit a close microphone and espeak-ng test audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Frames quieter than this (dBFS) are never speech.
    pub threshold_db: f32,
    /// Speech must be this much louder than the tracked noise floor (dB).
    pub margin_db: f32,
    /// Frames flatter than this (0 = a pure tone, ~0.56 = white noise) are noise.
    pub max_flatness: f32,
    pub min_speech_ms: u32,
    pub hangover_ms: u32,
    pub pre_roll_ms: u32,
    pub max_utterance_ms: u32,
    /// How far back from the limit a long utterance looks for its cut.
    pub cut_search_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            threshold_db: -45.0,
            margin_db: 10.0,
            max_flatness: 0.40,
            min_speech_ms: 100,
            hangover_ms: 700,
            pre_roll_ms: 240,
            max_utterance_ms: 29_000,
            cut_search_ms: 5_000,
        }
    }
}

fn frames(ms: u32) -> usize {
    (ms as usize * SAMPLE_RATE as usize / 1000).div_ceil(FRAME)
}

/// Per-frame measurements, exposed for tests and `--vad-debug`.
#[derive(Debug, Clone, Copy)]
pub struct FrameStats {
    pub db: f32,
    pub flatness: f32,
    pub speech: bool,
}

pub struct Vad {
    cfg: VadConfig,
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    pending: Vec<f32>,
    noise_db: f32,
    /// Recent frames before an utterance starts (pre-roll and onset).
    recent: VecDeque<(Vec<f32>, bool, f32)>,
    current: Option<Vec<f32>>,
    /// Loudness (dB) of each frame of `current`, to find where to cut it.
    current_db: Vec<f32>,
    quiet_frames: usize,
    speech_frames: usize,
}

impl Vad {
    pub fn new(cfg: VadConfig) -> Vad {
        let fft = FftPlanner::new().plan_fft_forward(FFT_LEN);
        let window = (0..FRAME)
            .map(|i| {
                let x = std::f32::consts::PI * 2.0 * i as f32 / (FRAME - 1) as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        Vad {
            cfg,
            fft,
            window,
            pending: Vec::new(),
            noise_db: -90.0,
            recent: VecDeque::new(),
            current: None,
            current_db: Vec::new(),
            quiet_frames: 0,
            speech_frames: 0,
        }
    }

    /// Whether an utterance is being collected (for the status LED).
    pub fn in_speech(&self) -> bool {
        self.current.is_some()
    }

    /// Loudness and flatness of one frame.
    pub fn measure(&self, frame: &[f32]) -> (f32, f32) {
        let energy = frame.iter().map(|s| s * s).sum::<f32>() / frame.len().max(1) as f32;
        let db = 10.0 * (energy + 1e-12).log10();
        let mut buf: Vec<Complex32> = (0..FFT_LEN)
            .map(|i| {
                Complex32::new(
                    frame.get(i).copied().unwrap_or(0.0)
                        * self.window.get(i).copied().unwrap_or(0.0),
                    0.0,
                )
            })
            .collect();
        self.fft.process(&mut buf);
        let p: Vec<f32> = buf[BIN_LO..BIN_HI]
            .iter()
            .map(|c| c.norm_sqr() + 1e-12)
            .collect();
        let mean = p.iter().sum::<f32>() / p.len() as f32;
        let log_mean = p.iter().map(|v| v.ln()).sum::<f32>() / p.len() as f32;
        (db, log_mean.exp() / mean)
    }

    fn classify(&mut self, frame: &[f32]) -> FrameStats {
        let (db, flatness) = self.measure(frame);
        let speech = db > self.cfg.threshold_db
            && db > self.noise_db + self.cfg.margin_db
            && flatness < self.cfg.max_flatness;
        if !speech {
            // Follow the floor down at once and up slowly.
            self.noise_db = if db < self.noise_db {
                db
            } else {
                0.95 * self.noise_db + 0.05 * db
            };
        }
        FrameStats {
            db,
            flatness,
            speech,
        }
    }

    /// Feed samples; returns the utterances that ended within them.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Pcm16k> {
        self.pending.extend_from_slice(samples);
        let mut done = Vec::new();
        let n = self.pending.len() / FRAME * FRAME;
        let chunk: Vec<f32> = self.pending.drain(..n).collect();
        for frame in chunk.chunks_exact(FRAME) {
            let st = self.classify(frame);
            if let Some(u) = self.step(frame, st) {
                done.push(u);
            }
        }
        done
    }

    /// End of input: the utterance in progress, if it holds enough speech.
    pub fn finish(&mut self) -> Option<Pcm16k> {
        let cur = self.current.take()?;
        self.recent.clear();
        self.current_db.clear();
        (self.speech_frames >= frames(self.cfg.min_speech_ms)).then_some(Pcm16k(cur))
    }

    fn step(&mut self, frame: &[f32], st: FrameStats) -> Option<Pcm16k> {
        let speech = st.speech;
        match self.current.as_mut() {
            None => {
                self.recent.push_back((frame.to_vec(), speech, st.db));
                let keep = frames(self.cfg.pre_roll_ms) + frames(self.cfg.min_speech_ms) * 2;
                while self.recent.len() > keep {
                    self.recent.pop_front();
                }
                // Onset: most of the last 2×min_speech frames are speech.
                let window = frames(self.cfg.min_speech_ms) * 2;
                let voiced = self
                    .recent
                    .iter()
                    .rev()
                    .take(window)
                    .filter(|f| f.1)
                    .count();
                if speech && voiced >= frames(self.cfg.min_speech_ms) {
                    let mut u = Vec::new();
                    self.current_db.clear();
                    for (f, _, db) in self.recent.drain(..) {
                        self.current_db.push(db);
                        u.extend_from_slice(&f);
                    }
                    self.current = Some(u);
                    self.quiet_frames = 0;
                    self.speech_frames = voiced;
                }
                None
            }
            Some(u) => {
                u.extend_from_slice(frame);
                self.current_db.push(st.db);
                if speech {
                    self.quiet_frames = 0;
                    self.speech_frames += 1;
                } else {
                    self.quiet_frames += 1;
                }
                if self.quiet_frames >= frames(self.cfg.hangover_ms) {
                    self.current_db.clear();
                    return self.current.take().map(Pcm16k);
                }
                if u.len() >= frames(self.cfg.max_utterance_ms) * FRAME {
                    return Some(self.cut_long());
                }
                None
            }
        }
    }

    /// Cut the utterance in progress at the quietest 60 ms (3 frames) of its
    /// last `cut_search_ms`; return the part before, keep the rest going.
    fn cut_long(&mut self) -> Pcm16k {
        let u = self.current.as_mut().expect("in an utterance");
        let n = self.current_db.len();
        if n < 3 {
            // Too short to choose (a limit under 60 ms): cut it all.
            self.current_db.clear();
            return Pcm16k(self.current.take().unwrap_or_default());
        }
        let span = frames(self.cfg.cut_search_ms).clamp(3, n);
        let energy = |i: usize| -> f32 {
            self.current_db[i - 1..=i + 1]
                .iter()
                .map(|db| 10f32.powf(db / 10.0))
                .sum()
        };
        // The middle frame of the quietest three; ties go to the later one.
        let cut = (n - span + 1..n - 1)
            .min_by(|&a, &b| energy(a).total_cmp(&energy(b)).then(b.cmp(&a)))
            .unwrap_or(n - 1);
        let rest = u.split_off(cut * FRAME);
        let head = std::mem::replace(u, rest);
        self.current_db.drain(..cut);
        tracing::debug!(
            at_s = cut as f32 * FRAME as f32 / SAMPLE_RATE as f32,
            "long speech cut at its quietest point"
        );
        Pcm16k(head)
    }

    /// All utterances in a whole recording.
    pub fn split(cfg: VadConfig, pcm: &Pcm16k) -> Vec<Pcm16k> {
        let mut vad = Vad::new(cfg);
        let mut out = vad.push(&pcm.0);
        out.extend(vad.finish());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic white noise generator (xorshift), uniform in [-a, a].
    fn noise(n: usize, a: f32) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect()
    }

    /// A vowel-like buzz: 140 Hz with harmonics, slowly modulated.
    fn buzz(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                (1..12)
                    .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
                    .sum::<f32>()
                    * 0.1
            })
            .collect()
    }

    #[test]
    fn silence_and_white_noise_hold_no_utterance() {
        let cfg = VadConfig::default();
        assert!(Vad::split(cfg, &Pcm16k(vec![0.0; 48_000])).is_empty());
        assert!(Vad::split(cfg, &Pcm16k(noise(48_000, 0.3))).is_empty());
    }

    #[test]
    fn voiced_sound_between_silences_is_one_utterance() {
        let mut x = vec![0.0; 16_000];
        x.extend(buzz(16_000));
        x.extend(vec![0.0; 24_000]);
        let us = Vad::split(VadConfig::default(), &Pcm16k(x));
        assert_eq!(us.len(), 1);
        let secs = us[0].seconds();
        assert!((1.0..2.1).contains(&secs), "{secs}");
    }

    #[test]
    fn long_speech_is_cut_in_its_quietest_gap_before_the_limit() {
        // 26 s of buzz, a 100 ms gap (far shorter than the hangover), 10 s
        // more: the cut falls in the gap, not at the 29 s limit.
        let mut x = vec![0.0; 8_000];
        x.extend(buzz(26 * 16_000));
        x.extend(vec![0.0; 1_600]);
        x.extend(buzz(10 * 16_000));
        x.extend(vec![0.0; 24_000]);
        let us = Vad::split(VadConfig::default(), &Pcm16k(x));
        assert_eq!(us.len(), 2);
        // Both sides of the cut are the gap's silence.
        let silent = |s: &[f32]| s.iter().all(|v| *v == 0.0);
        let first = &us[0].0;
        assert!(
            silent(&first[first.len() - 160..]),
            "the first part ends in sound"
        );
        assert!(silent(&us[1].0[..160]), "the second part starts in sound");
        assert!(us[0].seconds() < 27.0, "{}", us[0].seconds());
    }

    #[test]
    fn white_noise_measures_flat_and_buzz_does_not() {
        let v = Vad::new(VadConfig::default());
        let (_, flat_noise) = v.measure(&noise(FRAME, 0.3));
        let (_, flat_buzz) = v.measure(&buzz(FRAME));
        assert!(flat_noise > 0.45, "{flat_noise}");
        assert!(flat_buzz < 0.2, "{flat_buzz}");
    }
}
