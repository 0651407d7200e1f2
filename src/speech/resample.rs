//! Sample-rate conversion and down-mixing to whisper's 16 kHz mono.
//!
//! A windowed-sinc interpolator (Blackman window, 16 zero crossings, cut-off
//! at the lower Nyquist frequency so down-sampling does not alias). Audio
//! arrives whole here (WAV files, finished utterances), so quality wins over
//! streaming; the microphone path asks ALSA for 16 kHz directly.

use super::{Pcm16k, SAMPLE_RATE};

const ZEROS: f64 = 16.0;

/// Average interleaved channels into one.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// Resample mono `x` from `rate` Hz to 16 kHz.
pub fn to_16k(x: &[f32], rate: u32) -> Pcm16k {
    Pcm16k(resample(x, rate, SAMPLE_RATE))
}

pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let step = from as f64 / to as f64;
    let fc = (to as f64 / from as f64).min(1.0);
    let half = (ZEROS / fc).ceil() as i64;
    let n_out = ((x.len() as f64) / step).floor() as usize;
    let mut out = Vec::with_capacity(n_out);
    for n in 0..n_out {
        let t = n as f64 * step;
        let c = t.floor() as i64;
        let mut acc = 0.0f64;
        for k in (c - half + 1)..=(c + half) {
            if k < 0 || k as usize >= x.len() {
                continue;
            }
            let d = t - k as f64;
            let u = d * fc;
            let sinc = if u.abs() < 1e-12 {
                1.0
            } else {
                (std::f64::consts::PI * u).sin() / (std::f64::consts::PI * u)
            };
            // Blackman window over [-half, half].
            let w = d / half as f64;
            if w.abs() >= 1.0 {
                continue;
            }
            let p = std::f64::consts::PI * (w + 1.0);
            let win = 0.42 - 0.5 * p.cos() + 0.08 * (2.0 * p).cos();
            acc += x[k as usize] as f64 * sinc * win * fc;
        }
        out.push(acc as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| {
                (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_passband_tones_and_removes_aliases() {
        // 1 kHz survives 22.05 → 16 kHz with its level.
        let y = resample(&tone(1000.0, 22050, 1.0), 22050, 16000);
        assert!((y.len() as i64 - 16000).abs() <= 1);
        let r = rms(&y[1000..15000]);
        assert!((r - 0.5 / 2f64.sqrt()).abs() < 0.01, "{r}");
        // 10 kHz is above the new Nyquist: it must not fold back.
        let y = resample(&tone(10000.0, 44100, 1.0), 44100, 16000);
        assert!(rms(&y[1000..15000]) < 0.01);
    }

    #[test]
    fn downmix_averages() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
    }
}
