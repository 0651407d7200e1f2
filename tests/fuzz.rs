//! Mutation fuzzing of every parser that reads untrusted bytes, on stable
//! Rust (no nightly, no libFuzzer): the GGUF reader and validator, the
//! LoRA adapter reader, the whisper.cpp model walker, WAV input, the serial
//! line editor and the JSON line protocol.
//!
//! Each target starts from valid seed inputs (generated here: the tiny llama
//! model, an adapter for it, a small whisper.cpp model, WAVs in several
//! formats, typed terminal input, protocol lines) and applies 1-8 stacked
//! mutations: bit flips, interesting bytes, interesting 32/64-bit integers
//! at any offset (counts and lengths live there), insertions, deletions,
//! truncation, chunk duplication and splices between seeds. GGUF mutations
//! aim at the header three times in four, since the tensor data behind it
//! parses alike whatever it holds.
//!
//! Invariants: no panic, no abort, bounded memory (the peak RSS of the
//! process that parsed the inputs stays under 256 MiB although a mutated
//! count can claim gigabytes), and every GGUF the validator accepts as a
//! model loads in llama.cpp in a child process without a signal
//! (`common::llama_cpp_probe`, once per distinct header).
//!
//! Every target runs in a child process (this test binary, `fuzz_child`),
//! so an abort is caught and reported with the input that caused it, kept in
//! `target/fuzz-crashes/`. Input `i` of a run is a pure function of the seed
//! and `i`: `FERRITE_FUZZ_SEED=S FERRITE_FUZZ_ONLY=i` replays it.
//! `FERRITE_FUZZ_ITERS` sets the inputs per target (the test suite runs a
//! short pass; the README reports the long one).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferrite::gguf::GgufFile;

use crate::common::{llama_cpp_probe, tiny_llama};

/// Inputs per target in the test suite's pass.
const SHORT_ITERS: u64 = 20_000;
/// Peak RSS allowed to a fuzzing child process.
const MAX_RSS_KIB: u64 = 256 * 1024;
const TARGETS: [&str; 6] = ["gguf", "adapter", "whisper", "wav", "line", "json"];

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, i: u64) -> Rng {
        let mut r = Rng(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
];

/// One mutated input. `focus` is the byte range most mutations land in.
fn mutate(seeds: &[Vec<u8>], rng: &mut Rng, focus: Option<usize>) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    let at = |rng: &mut Rng, len: usize| match focus {
        Some(f) if rng.below(4) != 0 => rng.below(f.min(len)),
        _ => rng.below(len),
    };
    for _ in 0..1 + rng.below(8) {
        if b.is_empty() {
            b.push(rng.next() as u8);
        }
        let len = b.len();
        match rng.below(9) {
            0 => {
                let i = at(rng, len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = at(rng, len);
                b[i] = [0u8, 0xff, 0x7f, 0x80, 0x1b, b'[', b'\r', 0xc3][rng.below(8)];
            }
            2 => {
                let i = at(rng, len);
                b[i] = rng.next() as u8;
            }
            3 | 4 => {
                // An interesting integer, as u32 or u64, little-endian.
                let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
                let v = if rng.below(2) == 0 {
                    v
                } else {
                    v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
                };
                let bytes = if rng.below(2) == 0 {
                    (v as u32).to_le_bytes().to_vec()
                } else {
                    v.to_le_bytes().to_vec()
                };
                let i = at(rng, len);
                for (k, x) in bytes.into_iter().enumerate() {
                    if i + k < b.len() {
                        b[i + k] = x;
                    }
                }
            }
            5 => {
                let i = at(rng, len);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, ins);
            }
            6 => {
                let i = at(rng, len);
                let n = (1 + rng.below(32)).min(len - i);
                b.drain(i..i + n);
            }
            7 => b.truncate(at(rng, len)),
            _ => {
                // Duplicate a chunk, or splice in one from another seed.
                let other = &seeds[rng.below(seeds.len())];
                if other.is_empty() {
                    continue;
                }
                let s = rng.below(other.len());
                let n = (1 + rng.below(64)).min(other.len() - s);
                let chunk = other[s..s + n].to_vec();
                let i = at(rng, len);
                b.splice(i..i, chunk);
            }
        }
    }
    b
}

/// Valid inputs for `target`, and the byte range to focus on.
fn seeds(target: &str, dir: &Path) -> (Vec<Vec<u8>>, Option<usize>) {
    match target {
        "gguf" => {
            let b = tiny_llama().to_bytes();
            let start = gguf_data_start(dir, &b);
            (vec![b], Some(start))
        }
        "adapter" => {
            let model = dir.join("seed-model.gguf");
            tiny_llama().write(&model).unwrap();
            let a = dir.join("seed-adapter.gguf");
            ferrite::finetune::testing::write_random_adapter(
                &model,
                &a,
                2,
                4.0,
                0.02,
                7,
                Some("ab"),
            )
            .unwrap();
            let b = std::fs::read(&a).unwrap();
            let start = gguf_data_start(dir, &b);
            (vec![b], Some(start))
        }
        "whisper" => {
            let b = tiny_whisper();
            let n = b.len();
            (vec![b], Some(n - 50 * 24))
        }
        "wav" => (wavs(dir), Some(64)),
        "line" => (
            [
                &b"What is the capital of Japan?\r"[..],
                b"helo\x1b[Dl\x1b[H>\x1b[F<\x1b[3~\r\n",
                b"abc\x1b\x7f\x03/stats\r",
                "h\u{e9}llo \u{65e5}\u{672c} \u{1F600}\x08\x7f\r".as_bytes(),
                b"\x1bOD\x1b[1;5C\x15ok\n",
            ]
            .map(<[u8]>::to_vec)
            .to_vec(),
            None,
        ),
        "json" => (
            [
                &br#"{"q": "What is the capital of Japan?"}"#[..],
                br#"{"cmd": "set temp 0.5"}"#,
                br#"{"cmd": "lora use pirate 0.5"}"#,
                br#"{"cmd": "model smollm2-135m", "x": [1, 2, {"y": null}]}"#,
                br#"{"q": "\u00e9\ud83d\ude00 \"quoted\" \\ back"}"#,
            ]
            .map(<[u8]>::to_vec)
            .to_vec(),
            None,
        ),
        _ => unreachable!("{target}"),
    }
}

/// Where a GGUF's tensor data starts (everything before is header).
fn gguf_data_start(dir: &Path, b: &[u8]) -> usize {
    let p = dir.join("seed-probe.gguf");
    std::fs::write(&p, b).unwrap();
    let g = GgufFile::open(&p).unwrap();
    g.tensors.iter().map(|t| t.data_offset).min().unwrap() as usize
}

/// A small whisper.cpp model that `check_model` accepts: one encoder and
/// one decoder layer (50 tensors), 80 mel bins, three vocabulary entries.
fn tiny_whisper() -> Vec<u8> {
    let mut b = Vec::new();
    let put = |v: i32, b: &mut Vec<u8>| b.extend_from_slice(&v.to_le_bytes());
    put(0x6767_6d6c, &mut b);
    // n_vocab, audio ctx/state/head/layer, text ctx/state/head/layer, mels, ftype
    for v in [51864, 1, 64, 1, 1, 1, 64, 1, 1, 80, 1] {
        put(v, &mut b);
    }
    put(80, &mut b);
    put(201, &mut b);
    b.extend(std::iter::repeat_n(0u8, 4 * 80 * 201));
    put(3, &mut b);
    for w in [&b"a"[..], b"bc", b"!"] {
        put(w.len() as i32, &mut b);
        b.extend_from_slice(w);
    }
    for i in 0..50 {
        let name = format!("t{i:02}");
        put(1, &mut b); // dims
        put(name.len() as i32, &mut b);
        put(1, &mut b); // f16
        put(4, &mut b); // 4 elements
        b.extend_from_slice(name.as_bytes());
        b.extend(std::iter::repeat_n(0u8, 8));
    }
    b
}

/// WAVs as hound writes them: 16-bit mono 16 kHz, 8-bit, 24-bit stereo,
/// 32-bit float at 44.1 kHz.
fn wavs(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (bits, fmt, ch, rate) in [
        (16, hound::SampleFormat::Int, 1, 16000),
        (8, hound::SampleFormat::Int, 1, 8000),
        (24, hound::SampleFormat::Int, 2, 22050),
        (32, hound::SampleFormat::Float, 2, 44100),
    ] {
        let p = dir.join("seed.wav");
        let spec = hound::WavSpec {
            channels: ch,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: fmt,
        };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for i in 0..200 * ch as i32 {
            let x = ((i as f32) * 0.05).sin() * 0.5;
            match fmt {
                hound::SampleFormat::Float => w.write_sample(x).unwrap(),
                hound::SampleFormat::Int => w
                    .write_sample((x * ((1 << (bits - 1)) - 1) as f32) as i32)
                    .unwrap(),
            }
        }
        w.finalize().unwrap();
        out.push(std::fs::read(&p).unwrap());
    }
    out
}

/// What a child reports.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Summary {
    target: String,
    inputs: u64,
    accepted: u64,
    llama_probes: u64,
    peak_rss_kib: u64,
    panics: Vec<u64>,
}

/// Parse one input with `target`'s parser; `Ok(true)` if it was accepted.
fn parse_one(target: &str, input: &[u8], file: &Path) -> std::io::Result<bool> {
    let accepted = match target {
        "gguf" | "adapter" | "whisper" | "wav" => {
            std::fs::write(file, input)?;
            match target {
                "gguf" => GgufFile::open(file).is_ok_and(|g| {
                    let _ = g.summary().to_string();
                    g.check_model().is_ok()
                }),
                "adapter" => ferrite::adapter::inspect(file).is_ok(),
                "whisper" => ferrite::speech::whisper::check_model(file).is_ok(),
                _ => ferrite::speech::wav::read(file).is_ok_and(|w| !w.to_pcm16k().0.is_empty()),
            }
        }
        "line" => {
            let mut ed = ferrite::console::line::LineEditor::new(64, true);
            let mut lines = 0;
            for &b in input {
                if let Some(ferrite::console::line::Event::Line(_)) = ed.feed(b) {
                    lines += 1;
                }
                assert!(ed.len() <= 64, "the line grew past its maximum");
            }
            lines > 0
        }
        "json" => String::from_utf8_lossy(input)
            .lines()
            .any(|l| ferrite::assistant::parse_json_line(l).is_ok()),
        _ => unreachable!(),
    };
    Ok(accepted)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The child side: fuzz one target, print a `Summary` as JSON. A no-op
/// unless `fuzz_parsers` started it.
#[test]
#[ignore]
fn fuzz_child() {
    let Ok(target) = std::env::var("FERRITE_FUZZ_TARGET") else {
        return;
    };
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seed = env("FERRITE_FUZZ_SEED", 1);
    let iters = env("FERRITE_FUZZ_ITERS", SHORT_ITERS);
    let only = std::env::var("FERRITE_FUZZ_ONLY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let dir = PathBuf::from(std::env::var("FERRITE_FUZZ_DIR").unwrap());
    let (seed_inputs, focus) = seeds(&target, &dir);
    let file = dir.join(format!("input.{target}"));
    let mut sum = Summary {
        target: target.clone(),
        ..Default::default()
    };
    let mut probed = HashSet::new();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let range = match only {
        Some(i) => i..i + 1,
        None => 0..iters,
    };
    for i in range {
        let input = mutate(&seed_inputs, &mut Rng::new(seed, i), focus);
        // Kept on disk while it is parsed: after an abort, it is the culprit.
        let r = std::panic::catch_unwind(|| parse_one(&target, &input, &file));
        sum.inputs += 1;
        match r {
            Ok(Ok(true)) => {
                sum.accepted += 1;
                // An accepted model must not make llama.cpp abort: once per
                // distinct header (data-only mutations load alike).
                if target == "gguf" {
                    let head = &input[..focus.unwrap().min(input.len())];
                    if head != &seed_inputs[0][..head.len()] && probed.insert(head.to_vec()) {
                        sum.llama_probes += 1;
                        let st = llama_cpp_probe(&file);
                        if !st.success() {
                            let keep = dir.join(format!("llama-{i}.gguf"));
                            std::fs::copy(&file, &keep).unwrap();
                            let msg = format!("input {i} (seed {seed}) was accepted but llama.cpp ended with {st}: {}", keep.display());
                            eprintln!("{msg}");
                            println!("FUZZ-FAILURE {msg}");
                            std::process::exit(3);
                        }
                    }
                }
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => panic!("writing the input: {e}"),
            Err(_) => {
                std::fs::write(dir.join(format!("panic-{i}.{target}")), &input).unwrap();
                sum.panics.push(i);
            }
        }
    }
    std::panic::set_hook(quiet);
    sum.peak_rss_kib = peak_rss_kib();
    println!("FUZZ-SUMMARY {}", serde_json::to_string(&sum).unwrap());
}

/// Fuzz every target in its own child process and hold the invariants.
#[test]
fn fuzz_parsers() {
    let iters = std::env::var("FERRITE_FUZZ_ITERS").unwrap_or_else(|_| SHORT_ITERS.to_string());
    let seed = std::env::var("FERRITE_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
    let mut report = Vec::new();
    for target in TARGETS {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fuzz::fuzz_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FERRITE_FUZZ_TARGET", target)
            .env("FERRITE_FUZZ_ITERS", &iters)
            .env("FERRITE_FUZZ_SEED", &seed)
            .env("FERRITE_FUZZ_DIR", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let crashed = |why: &str| {
            std::fs::create_dir_all(&keep).unwrap();
            for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
            panic!(
                "{target} (seed {seed}): {why}; inputs kept in {}\n{text}\n{}",
                keep.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if !out.status.success() {
            crashed(&format!("the fuzzing process ended with {}", out.status));
        }
        let Some(line) = text
            .lines()
            .find_map(|l| l.split_once("FUZZ-SUMMARY ").map(|(_, r)| r))
        else {
            crashed("no summary");
            unreachable!()
        };
        let sum: Summary = serde_json::from_str(line).unwrap();
        if !sum.panics.is_empty() {
            crashed(&format!("panics at inputs {:?}", sum.panics));
        }
        if sum.peak_rss_kib > MAX_RSS_KIB {
            crashed(&format!("peak RSS {} KiB", sum.peak_rss_kib));
        }
        report.push(format!(
            "{:>8}: {} inputs, {} accepted, {} llama.cpp loads, peak RSS {} MiB",
            sum.target,
            sum.inputs,
            sum.accepted,
            sum.llama_probes,
            sum.peak_rss_kib / 1024
        ));
    }
    let mut e = std::io::stderr();
    let _ = writeln!(e, "fuzz (seed {seed}):\n{}", report.join("\n"));
}
