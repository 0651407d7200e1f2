//! Tokenizer metadata llama.cpp cannot survive: each fault is first shown
//! to abort llama.cpp itself (in a child process, no ferrite check in
//! between), then shown to be refused by ferrite's validator with a message
//! that names it, before any C code sees the file. The README's "Bad files"
//! lists them; `src/gguf/vocab.rs` cites the llama.cpp lines.

use std::collections::BTreeMap;

use ferrite::gguf::{GgufFile, Value, ValueType};
use ferrite::llm::{Engine, LoadOptions};

use crate::common::{llama_cpp_probe, tiny_llama};

type Edit = fn(&mut BTreeMap<String, Value>);

fn tokens(kv: &mut BTreeMap<String, Value>) -> &mut Vec<Value> {
    match kv.get_mut("tokenizer.ggml.tokens") {
        Some(Value::Array(_, t)) => t,
        _ => unreachable!(),
    }
}

/// (case, edit, what the refusal says, whether llama.cpp aborts on it)
const CASES: &[(&str, Edit, &str, bool)] = &[
    (
        "a token repeated",
        |kv| tokens(kv)[6] = tokens(kv)[7].clone(),
        "token 7 repeats token 6",
        true,
    ),
    (
        "an empty token colliding with its placeholder name",
        |kv| {
            tokens(kv)[5] = Value::Str(String::new());
            tokens(kv)[6] = Value::Str("[EMPTY_5]".into());
        },
        "repeats token",
        true,
    ),
    (
        "a SentencePiece vocabulary missing a byte token",
        |kv| {
            let t = tokens(kv);
            let i = t.iter().position(|v| v.as_str() == Some("<0xC3>")).unwrap();
            t[i] = Value::Str("no-byte".into());
            if let Some(Value::Array(_, ty)) = kv.get_mut("tokenizer.ggml.token_type") {
                ty[i] = Value::I32(1);
            }
        },
        "no token for byte 0xC3",
        true,
    ),
    (
        "no vocabulary at all",
        |kv| {
            kv.insert("tokenizer.ggml.model".into(), Value::Str("none".into()));
        },
        "has no vocabulary",
        false,
    ),
    (
        "BOS always added (Gemma 4 tokenizer) without a BOS id",
        |kv| {
            kv.insert("tokenizer.ggml.model".into(), Value::Str("gemma4".into()));
            kv.insert(
                "tokenizer.ggml.merges".into(),
                Value::Array(ValueType::Str, vec![]),
            );
            kv.remove("tokenizer.ggml.bos_token_id");
        },
        "BOS token is added to every prompt",
        true,
    ),
    (
        "a byte-typed token that is not <0xXX>",
        |kv| {
            if let Some(Value::Array(_, ty)) = kv.get_mut("tokenizer.ggml.token_type") {
                ty[8] = Value::I32(6);
            }
        },
        "is typed as a byte",
        false,
    ),
    (
        "fewer scores than tokens",
        |kv| {
            if let Some(Value::Array(_, s)) = kv.get_mut("tokenizer.ggml.scores") {
                s.truncate(10);
            }
        },
        "10 scores for",
        false,
    ),
    (
        "an unknown tokenizer",
        |kv| {
            kv.insert(
                "tokenizer.ggml.model".into(),
                Value::Str("sentencepiece9".into()),
            );
        },
        "unknown tokenizer `sentencepiece9`",
        false,
    ),
];

#[test]
fn bad_vocabularies_are_refused_before_llama_cpp_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    tiny_llama().write(&good).unwrap();
    GgufFile::open(&good).unwrap().check_model().unwrap();
    assert!(
        llama_cpp_probe(&good).success(),
        "llama.cpp fails on the good model"
    );
    for (i, (case, edit, says, aborts)) in CASES.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.gguf"));
        crate::common::rewrite_gguf(&good, &p, edit);
        let status = llama_cpp_probe(&p);
        if *aborts {
            use std::os::unix::process::ExitStatusExt;
            assert!(
                status.signal().is_some() || status.code() == Some(101),
                "{case}: expected llama.cpp to abort, it exited with {status}"
            );
        }
        let e = Engine::load("bad", &p, &LoadOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{case}: ferrite accepted it"))
            .to_string();
        assert!(e.contains(says), "{case}: {e}");
        assert!(e.contains(&format!("bad{i}.gguf")), "{case}: {e}");
    }
}
