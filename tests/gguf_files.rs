//! The GGUF validator against files that are empty, cut short, corrupt or
//! foreign, and llama.cpp loading a tiny model the test writes itself.

use std::ops::ControlFlow;

use ferrite::gguf::{GgufError, GgufFile, Value};
use ferrite::llm::{Engine, GenParams, LoadOptions, SessionOptions};

use crate::common::{tiny_llama, write_tiny_llama};

#[test]
fn tiny_model_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tiny_llama(dir.path());
    let g = GgufFile::open(&p).unwrap();
    g.check_model().unwrap();
    assert_eq!(g.summary().n_layers, Some(1));
    let engine = Engine::load("tiny", &p, &LoadOptions::default()).unwrap();
    let mut s = engine
        .session(SessionOptions {
            ctx_tokens: 64,
            threads: 1,
            ..Default::default()
        })
        .unwrap();
    let params = GenParams {
        n_predict: Some(8),
        ..GenParams::greedy()
    };
    let mut n_calls = 0;
    let r = s
        .complete("ab", &params, &mut |_| {
            n_calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(r.stats.gen_tokens <= 8);
    assert_eq!(n_calls, r.stats.gen_tokens);
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = tiny_llama().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    // Every cut inside the header and tensor table, then a stride through data.
    let header_end = 2048.min(bytes.len());
    let cuts = (1..header_end).chain((header_end..bytes.len()).step_by(509));
    for cut in cuts {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match GgufFile::open(&p) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("cut.gguf"), "error must name the file: {msg}");
            }
            Ok(_) => panic!("a file cut at byte {cut} of {} was accepted", bytes.len()),
        }
    }
}

#[test]
fn corrupt_headers_never_panic() {
    let bytes = tiny_llama().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flip.gguf");
    let mut s = 0x1234_5678u64;
    for _ in 0..300 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let mut b = bytes.clone();
        let at = (s % 1500) as usize;
        b[at] ^= 1 << (s >> 61);
        std::fs::write(&p, &b).unwrap();
        // Either verdict is fine; a panic or a huge allocation is not.
        let _ = GgufFile::open(&p).map(|g| g.check_model());
    }
}

#[test]
fn absurd_counts_are_corrupt_not_oom() {
    let mut bytes = tiny_llama().to_bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("count.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = GgufFile::open(&p).unwrap_err();
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
}

#[test]
fn empty_directory_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(GgufError::Empty { .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.path()),
        Err(GgufError::Directory { .. })
    ));

    let whisper = dir.path().join("ggml-tiny.bin");
    std::fs::write(&whisper, 0x6767_6d6cu32.to_le_bytes()).unwrap();
    let e = GgufFile::open(&whisper).unwrap_err().to_string();
    assert!(e.contains("whisper.cpp"), "{e}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "# just some notes\n").unwrap();
    assert!(matches!(
        GgufFile::open(&text),
        Err(GgufError::BadMagic { .. })
    ));

    for (key, value, expect) in [
        (
            "general.architecture",
            Value::Str("clip".into()),
            "not supported",
        ),
        ("general.type", Value::Str("adapter".into()), "LoRA adapter"),
    ] {
        let mut w = tiny_llama();
        w.kv(key, value);
        let p = dir.path().join("foreign.gguf");
        w.write(&p).unwrap();
        let e = GgufFile::open(&p)
            .unwrap()
            .check_model()
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{e}");
        // And the engine refuses it before llama.cpp sees it.
        let e = Engine::load("x", &p, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(expect), "{e}");
    }
}

/// The child side of `common::llama_cpp_probe`: a no-op unless the probe
/// started it.
#[test]
#[ignore]
fn llama_cpp_probe_child() {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    let Some(path) = std::env::var_os(crate::common::PROBE_ENV) else {
        return;
    };
    let mut backend = LlamaBackend::init().unwrap();
    backend.void_logs();
    let Ok(model) = LlamaModel::load_from_file(
        &backend,
        std::path::Path::new(&path),
        &LlamaModelParams::default(),
    ) else {
        return; // a clean refusal
    };
    let vocab = model.vocab();
    let text = "Hello, world! \u{e9}t\u{e9} \u{65e5}\u{672c} \u{1F600}\t\n\x01\x7f <s> 12345";
    let tokens = vocab.tokenize(text.as_bytes(), true, true);
    let mut piece = Vec::new();
    for &t in &tokens {
        piece.clear();
        vocab.token_to_piece_into(t, &mut piece, true, None);
    }
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(64))
        .with_n_batch(64)
        .with_n_ubatch(64)
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let Ok(mut ctx) = model.new_context(&backend, params) else {
        return;
    };
    let mut batch = LlamaBatch::new(64, 1);
    for (i, &t) in tokens.iter().take(32).enumerate() {
        batch.add(t, i as i32, &[0], true).unwrap();
    }
    if batch.n_tokens() > 0 {
        let _ = ctx.decode(&mut batch);
    }
}
