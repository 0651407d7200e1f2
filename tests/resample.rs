//! rubato (the resampler ferrite uses) against ferrite's former windowed-sinc
//! resampler (tests/common/sinc.rs), on pure tones at the rates WAV files
//! come in. Levels are measured by a least-squares sine fit at the tone's
//! frequency away from the clip's edges, so a gain and a residual in dB are
//! exact numbers rather than FFT-bin estimates.

use std::f64::consts::PI;

use ferrite::speech::resample::resample;

use crate::common::sinc;

const OUT: u32 = 16_000;
const AMP: f64 = 0.5;
/// Output samples ignored at each end (filter start-up).
const EDGE: usize = 2_000;

fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
    (0..(rate as f64 * secs) as usize)
        .map(|i| ((2.0 * PI * freq * i as f64 / rate as f64).sin() * AMP) as f32)
        .collect()
}

/// Least-squares fit of `a·sin + b·cos` at `freq` to the 16 kHz output `y`
/// (both resamplers keep t = 0 at sample 0): (gain in dB against the input
/// amplitude, residual power in dB against the fitted tone).
fn fit(y: &[f32], freq: f64) -> (f64, f64) {
    let w = |i: usize| 2.0 * PI * freq * i as f64 / OUT as f64;
    let mid = EDGE..y.len() - EDGE;
    let (mut ss, mut sc, mut cc, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in mid.clone() {
        let (s, c, v) = (w(i).sin(), w(i).cos(), y[i] as f64);
        (ss, sc, cc, sy, cy) = (ss + s * s, sc + s * c, cc + c * c, sy + s * v, cy + c * v);
    }
    let det = ss * cc - sc * sc;
    let (a, b) = ((sy * cc - cy * sc) / det, (cy * ss - sy * sc) / det);
    let res: f64 = mid
        .clone()
        .map(|i| (y[i] as f64 - a * w(i).sin() - b * w(i).cos()).powi(2))
        .sum();
    let power = (a * a + b * b) / 2.0 * mid.len() as f64;
    (
        20.0 * ((a * a + b * b).sqrt() / AMP).log10(),
        10.0 * (res / power).log10(),
    )
}

/// RMS level of `y` away from its edges, in dB against the input tone's.
fn level_db(y: &[f32]) -> f64 {
    let mid = &y[EDGE..y.len() - EDGE];
    let ms = mid.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / mid.len() as f64;
    10.0 * (ms / (AMP * AMP / 2.0)).log10()
}

/// Power of `a - b` against `a`'s, in dB, away from the edges.
fn difference_db(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) - EDGE;
    let (d, p) = (EDGE..n).fold((0.0, 0.0), |(d, p), i| {
        (
            d + (a[i] as f64 - b[i] as f64).powi(2),
            p + (a[i] as f64).powi(2),
        )
    });
    10.0 * (d / p).log10()
}

#[test]
fn rubato_matches_the_former_resampler_where_both_are_flat() {
    for rate in [8_000, 22_050, 44_100, 48_000] {
        for freq in [440.0, 1_000.0, 3_000.0, 6_000.0] {
            if freq >= rate as f64 / 2.0 {
                continue;
            }
            let x = tone(freq, rate, 2.0);
            let (new, old) = (resample(&x, rate, OUT), sinc::resample(&x, rate, OUT));
            assert!(
                new.len().abs_diff(old.len()) <= 1,
                "{rate} Hz: {} vs {} samples",
                new.len(),
                old.len()
            );
            let (gain, residual) = fit(&new, freq);
            assert!(
                gain.abs() < 0.01,
                "{rate} Hz, {freq} Hz tone: gain {gain:.3} dB"
            );
            assert!(
                residual < -100.0,
                "{rate} Hz, {freq} Hz tone: residual {residual:.1} dB"
            );
            // The former resampler's own residual reaches -75 dB (8 kHz in,
            // 3 kHz tone), which bounds how close the two can be.
            let d = difference_db(&new, &old);
            assert!(
                d < -70.0,
                "{rate} Hz, {freq} Hz tone: outputs differ by {d:.1} dB"
            );
        }
    }
}

#[test]
fn rubato_is_flatter_at_the_band_edge_and_rejects_aliases() {
    for rate in [22_050, 44_100, 48_000] {
        // 7.5 kHz: speech's fricatives, inside whisper's 0-8 kHz mel range.
        let x = tone(7_500.0, rate, 2.0);
        let (new, _) = fit(&resample(&x, rate, OUT), 7_500.0);
        let (old, _) = fit(&sinc::resample(&x, rate, OUT), 7_500.0);
        assert!(new.abs() < 0.1, "{rate} Hz: 7.5 kHz at {new:.2} dB");
        assert!(
            new > old + 1.0,
            "{rate} Hz: 7.5 kHz at {new:.2} dB, formerly {old:.2} dB"
        );
        // Above the new Nyquist frequency a tone must vanish, not fold back
        // into the band as a false one.
        for freq in [8_500.0, 10_000.0] {
            let x = tone(freq, rate, 2.0);
            let new = level_db(&resample(&x, rate, OUT));
            let old = level_db(&sinc::resample(&x, rate, OUT));
            assert!(
                new < -100.0,
                "{rate} Hz: {freq} Hz folds back at {new:.1} dB"
            );
            assert!(
                new < old - 30.0,
                "{rate} Hz: {freq} Hz at {new:.1} dB, formerly {old:.1} dB"
            );
        }
    }
}

#[test]
fn an_impulse_stays_where_it_was() {
    // rubato's FFT blocks delay the signal; `process_all` must trim that
    // delay so words keep their timing (and the VAD its boundaries).
    for rate in [22_050, 44_100, 48_000] {
        let mut x = vec![0.0f32; rate as usize];
        x[rate as usize / 2] = 1.0;
        let y = resample(&x, rate, OUT);
        let peak = (0..y.len()).max_by(|a, b| y[*a].total_cmp(&y[*b])).unwrap();
        assert_eq!(peak, OUT as usize / 2, "{rate} Hz");
    }
}

#[test]
fn short_and_odd_inputs() {
    // Shorter than one FFT block, a prime rate, and one sample.
    for (len, rate) in [(100, 44_100), (30_011, 30_011), (1, 48_000)] {
        let y = resample(&vec![0.25; len], rate, OUT);
        let want = (len as u64 * OUT as u64).div_ceil(rate as u64) as usize;
        assert_eq!(y.len(), want, "{len} samples at {rate} Hz");
        assert!(y.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn non_finite_and_loud_samples_do_not_poison_the_output() {
    // A NaN or infinity in one FFT block would make the whole block NaN
    // (and rubato's inverse FFT refuse it: found by tests/fuzz.rs).
    let mut x = tone(1_000.0, 44_100, 1.0);
    x[1_000] = f32::NAN;
    x[2_000] = f32::INFINITY;
    x[3_000] = 1e30;
    let y = resample(&x, 44_100, OUT);
    assert_eq!(y.len(), 16_000);
    assert!(y.iter().all(|v| v.is_finite() && v.abs() < 2.0));
}
