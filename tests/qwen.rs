//! The models people run on a Pi 5 or an Orin: Qwen2.5-Coder-0.5B-Instruct
//! (qwen2 architecture, a 151,936-token vocabulary, Q4_K/Q5_0/Q8_0), pulled
//! through the manifest's six registry parts, in every path: ask, the
//! console, perplexity, bench, `models info`, the memory refusal on each
//! board profile, and a quantized KV cache. (The 1.5B, 1.1 GB, is checked
//! by benches/speculative.py, not in CI.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrite::board::{self, Board, KvType};
use ferrite::gguf::GgufFile;

use crate::common::{ferrite, ferrite_with_input};

const NAME: &str = "qwen2.5-coder-0.5b";

pub fn qwen() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| crate::common::pulled(NAME))
}

fn run(args: &[&str]) -> (String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = ferrite(home.path(), args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?}: {err}");
    (String::from_utf8_lossy(&out.stdout).to_string(), err)
}

#[test]
fn qwen_answers_in_ask_and_the_console_with_any_kv_cache_type() {
    let m = qwen().to_str().unwrap();
    let q = "What is the capital of Japan? Answer in one sentence.";
    for kv in ["f16", "q8_0", "q4_0"] {
        let (said, _) = run(&[
            "ask", "-m", m, "--temp", "0", "-n", "16", "-t", "2", "--ctk", kv, "--ctv", kv, q,
        ]);
        assert!(said.contains("Tokyo"), "{kv}: {said}");
    }
    let home = tempfile::tempdir().unwrap();
    let out = ferrite_with_input(
        home.path(),
        &[
            "serve", "--stdio", "-m", m, "--temp", "0", "-n", "16", "-t", "2",
        ],
        format!("{q}\n").as_bytes(),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("Tokyo"), "{said}");
}

#[test]
fn qwen_runs_perplexity_bench_and_info() {
    let m = qwen().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "def add(a, b):\n    return a + b\n\n".repeat(40)
            + &"The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let (out, _) = run(&[
        "perplexity",
        "-m",
        m,
        "-f",
        text.to_str().unwrap(),
        "-c",
        "128",
        "-t",
        "2",
    ]);
    let ppl: f64 = out
        .split("PPL = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // Repeated text is easy: far below a uniform guess over 151,936.
    assert!(ppl > 1.0 && ppl < 20.0, "{ppl}");
    let (out, _) = run(&[
        "bench", "-m", m, "-p", "16", "-n", "4", "-r", "1", "-t", "2", "--ctk", "q8_0", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["type_k"], "q8_0", "{out}");
    assert!(rows[1]["avg_ts"].as_f64().unwrap() > 0.0, "{out}");
    let (out, _) = run(&["models", "info", m]);
    assert!(out.contains("qwen2") && out.contains("151936"), "{out}");
    // 24 layers × 2 KV heads × (64 + 64) × 2 bytes, as llama.cpp allocates it.
    assert!(
        out.contains("f16 12288 B, q8_0 6528 B, q4_0 3456 B"),
        "{out}"
    );
}

#[test]
fn qwen_fits_the_boards_it_should_and_is_refused_where_it_cannot() {
    let g = GgufFile::open(qwen()).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    std::fs::write(
        root.path().join("proc/meminfo"),
        "MemTotal: 67108864 kB\nMemAvailable: 67108864 kB\n",
    )
    .unwrap();
    for name in Board::names() {
        let b = Board::load(name).unwrap();
        let kv = (b.kv_type, b.kv_type);
        let r = board::check_fits(&b, &g, b.ctx_tokens, 512, kv, root.path());
        // A 256 MiB Zero 2 W and a 640 MiB 32-bit Pi cannot hold it; every
        // 64-bit board profile can.
        let small = matches!(name, "rpi-zero2w" | "rpi-armv7");
        match r {
            Ok(est) => assert!(!small, "{name}: fits in {} MiB?", est.total() >> 20),
            Err(e) => {
                let e = e.to_string();
                assert!(small, "{name}: {e}");
                assert!(e.contains("MiB") && e.contains(name), "{name}: {e}");
            }
        }
    }
    // The 8-bit cache holds the same context in less memory.
    let f16 = board::estimate(&g, 4096, 512, (KvType::F16, KvType::F16));
    let q8 = board::estimate(&g, 4096, 512, (KvType::Q8_0, KvType::Q8_0));
    assert_eq!(f16.kv_bytes, 12288 * 4096);
    assert!(q8.kv_bytes * 100 < f16.kv_bytes * 54);
}
