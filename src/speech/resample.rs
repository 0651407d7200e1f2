//! Sample-rate conversion and down-mixing to whisper's 16 kHz mono.
//!
//! rubato's synchronous FFT resampler (one FFT block of 4096 to 8192 input
//! frames, Blackman-Harris anti-aliasing filter with its cut-off just under the
//! lower Nyquist frequency). It replaced ferrite's own windowed-sinc
//! interpolator after a comparison (tests/resample.rs, benches/resample.rs):
//! the same passband to within -70 dB where both are flat, flat to 7.5 kHz
//! where the sinc had fallen by 1.3 dB, aliases from 8.5 kHz down by more
//! than 140 dB where the sinc let them through at -17 dB, and 90-155× fewer
//! instructions per second of audio on a Cortex-A76. Audio arrives whole here (WAV
//! files, finished utterances); the microphone path asks ALSA for 16 kHz
//! directly.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use super::{Pcm16k, SAMPLE_RATE};

/// Input frames per FFT block, at least: long enough for a steep
/// anti-aliasing filter (its transition band is a few bins of the block
/// wide), short enough that a one-second clip is a few blocks.
const BLOCK: usize = 4096;

/// The input block rubato's `Fft` runs on: a multiple of `from / gcd` (its
/// smallest whole block) by a power of two, so both FFT sizes factor into
/// small primes. 4096 frames at 48 kHz would make rubato's FFTs 2·3·683
/// points long, 3.7× slower than 3·2^11 (measured with benches/resample.rs).
fn block(from: u32, to: u32) -> usize {
    let (mut a, mut b) = (from as usize, to as usize);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let min_in = from as usize / a;
    min_in * BLOCK.div_ceil(min_in).next_power_of_two()
}

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
///
/// # Panics
/// If `rate` is 0 (the WAV reader accepts 1 kHz to 384 kHz).
pub fn to_16k(x: &[f32], rate: u32) -> Pcm16k {
    Pcm16k(resample(x, rate, SAMPLE_RATE))
}

/// Resample mono `x` from `from` Hz to `to` Hz: `ceil(len · to / from)`
/// samples, aligned with the input (rubato trims its filter delay).
/// Samples are audio in [-1, 1]: larger ones are clipped there and
/// non-finite ones taken as 0 first, since one NaN or infinity would spread
/// through a whole FFT block (and rubato's inverse FFT refuses it).
///
/// # Panics
/// If `from` or `to` is 0.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    assert!(from > 0 && to > 0, "sample rates must be positive");
    let clean = |v: &f32| {
        if v.is_finite() {
            v.clamp(-1.0, 1.0)
        } else {
            0.0
        }
    };
    if x.is_empty() || from == to {
        return x.iter().map(clean).collect();
    }
    let x: Vec<f32> = x.iter().map(clean).collect();
    let x = &x[..];
    let mut r = Fft::<f32>::new_custom(
        from as usize,
        to as usize,
        block(from, to),
        1,
        1,
        WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .expect("positive rates and block size");
    let input = InterleavedSlice::new(x, 1, x.len()).expect("one channel of x.len() frames");
    r.process_all(&input, x.len(), None)
        .expect("process_all sizes its own output")
        .take_data()
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
