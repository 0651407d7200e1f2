//! ferrite's own resampler before issue #13, kept as the reference that
//! rubato was measured against (tests/resample.rs, benches/resample.rs): a
//! windowed-sinc interpolator (Blackman window, 16 zero crossings, cut-off at
//! the lower Nyquist frequency), evaluated in f64 with the window and sinc
//! computed per tap.

const ZEROS: f64 = 16.0;

/// Resample mono `x` from `from` Hz to `to` Hz: `floor(len · to / from)`
/// samples, aligned with the input.
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
