//! Resampling ten seconds of 44.1 kHz and 48 kHz audio to 16 kHz: rubato (what
//! `ferrite transcribe` uses for WAV files) against ferrite's former
//! windowed-sinc resampler (tests/common/sinc.rs). Throughput is in input
//! samples.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "../tests/common/sinc.rs"]
mod sinc;

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for rate in [44_100u32, 48_000] {
        // Speech-like: a few harmonics, 10 s.
        let x: Vec<f32> = (0..rate as usize * 10)
            .map(|i| {
                let t = i as f64 / rate as f64;
                [220.0, 660.0, 1_900.0, 3_100.0]
                    .iter()
                    .map(|f| (2.0 * std::f64::consts::PI * f * t).sin() * 0.2)
                    .sum::<f64>() as f32
            })
            .collect();
        g.throughput(Throughput::Elements(x.len() as u64));
        g.bench_function(format!("rubato_fft_{rate}_to_16000_10s"), |b| {
            b.iter(|| ferrite::speech::resample::resample(&x, rate, 16_000))
        });
        g.bench_function(format!("former_sinc_{rate}_to_16000_10s"), |b| {
            b.iter(|| sinc::resample(&x, rate, 16_000))
        });
    }
    g.finish();
}

criterion_group!(resample, benches);
criterion_main!(resample);
