//! Criterion benches of the LLM stage on the default model (SmolLM2-135M
//! Q4_1), named by backend, operation, quantization and size. Throughput is in
//! tokens, so criterion reports tokens/s next to the time.
//!
//! `ferrite bench` is the llama-bench-compatible view of the same engine;
//! these benches also cover ferrite's own per-token work (sampling, UTF-8 and
//! stop-string handling, the sink).

use std::ops::ControlFlow;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrite::llm::{Engine, GenParams, LoadOptions, SessionOptions};
use ferrite::models::{self, Manifest, Store};

/// The default model from the store `ferrite` uses without `FERRITE_HOME`.
fn engine() -> Engine {
    let manifest = Manifest::parse(models::BUILTIN, "builtin").unwrap();
    let root = std::env::var_os("FERRITE_HOME").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/ferrite")
        },
        std::path::PathBuf::from,
    );
    let store = Store::new(root);
    let (name, path) = store.resolve(None, &manifest, true).unwrap();
    Engine::load(&name, &path, &LoadOptions::default()).unwrap()
}

fn benches(c: &mut Criterion) {
    let engine = engine();
    let threads = ferrite::llm::default_threads();
    let mut s = engine
        .session(SessionOptions {
            ctx_tokens: 1024,
            threads,
            ..Default::default()
        })
        .unwrap();
    let mut g = c.benchmark_group("llm");
    g.sample_size(10).measurement_time(Duration::from_secs(15));

    // Prompt processing: 128 tokens from an empty cache.
    let prompt = "The history of computing is long and full of surprises. ".repeat(12);
    let n_prompt = engine.tokenize(&prompt).len();
    let prefill = GenParams {
        n_predict: Some(0),
        ..GenParams::greedy()
    };
    g.throughput(Throughput::Elements(n_prompt as u64));
    g.bench_function(format!("cpu_prefill_q4_1_135m_{n_prompt}tok"), |b| {
        b.iter(|| {
            s.reset();
            s.complete(&prompt, &prefill, &mut |_| ControlFlow::Continue(()))
                .unwrap()
        })
    });

    // Decode: 64 greedy tokens after a short, cached prompt.
    let n_gen = 64;
    let decode = GenParams {
        n_predict: Some(n_gen),
        stop: Vec::new(),
        ..GenParams::greedy()
    };
    g.throughput(Throughput::Elements(n_gen as u64));
    g.bench_function("cpu_decode_q4_1_135m_64tok", |b| {
        b.iter(|| {
            let r = s
                .complete(
                    "Once upon a time, in a land far away,",
                    &decode,
                    &mut |_| ControlFlow::Continue(()),
                )
                .unwrap();
            assert_eq!(r.stats.gen_tokens, n_gen, "the model stopped early");
            r
        })
    });
    g.finish();
}

criterion_group!(cpu_llm, benches);
criterion_main!(cpu_llm);
