//! The `ferrite` binary as a user runs it: bad model files end with one
//! error line and exit code 1 (never a signal), and the real model answers.

use std::os::unix::process::ExitStatusExt;

use crate::common::{ferrite, model_path, write_tiny_llama};

#[test]
fn bad_model_files_give_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.gguf"), b"").unwrap();
    // A real model cut short, the way an interrupted copy leaves it.
    let real = std::fs::read(model_path()).unwrap();
    std::fs::write(d.join("truncated.gguf"), &real[..real.len() / 3]).unwrap();
    let mut junk = b"GGUF\x03\x00\x00\x00".to_vec();
    let mut s = 99u64;
    junk.extend((0..65536).map(|_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        (s >> 56) as u8
    }));
    std::fs::write(d.join("random.gguf"), &junk).unwrap();
    std::fs::write(d.join("readme.txt"), "not a model\n").unwrap();
    std::fs::create_dir(d.join("folder.gguf")).unwrap();
    for (name, expect) in [
        ("empty.gguf", "empty"),
        ("truncated.gguf", "truncated"),
        ("random.gguf", "random.gguf"),
        ("readme.txt", "not a GGUF file"),
        ("folder.gguf", "directory"),
        ("missing.gguf", "no such file"),
    ] {
        let p = d.join(name);
        let out = ferrite(d, &["ask", "-m", p.to_str().unwrap(), "hello"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            None,
            "{name}: killed by a signal: {stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: expected one line, got: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}: wrote to stdout");
    }
}

#[test]
fn ask_answers_paris_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferrite(
        dir.path(),
        &[
            "ask",
            "-m",
            model_path().to_str().unwrap(),
            "--temp",
            "0",
            "--stats",
            "What is the capital of Japan?",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Tokyo"), "{stdout}");
    assert!(
        stderr.contains("tok/s") && stderr.contains("ttft"),
        "{stderr}"
    );
}

#[test]
fn models_info_reads_the_real_model_and_the_tiny_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferrite(
        dir.path(),
        &["models", "info", model_path().to_str().unwrap()],
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "architecture:   llama",
        "Q4_1",
        "chat template:  yes",
        "context length: 8192",
        "loadable:       yes",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let tiny = write_tiny_llama(dir.path());
    let out = ferrite(
        dir.path(),
        &["models", "info", "--json", tiny.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["arch"], "llama");
    assert_eq!(v["n_layers"], 1);
}

#[test]
fn import_list_path_rm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write_tiny_llama(dir.path());
    let out = ferrite(
        dir.path(),
        &["models", "import", tiny.to_str().unwrap(), "--name", "tiny"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list =
        String::from_utf8_lossy(&ferrite(dir.path(), &["models", "list"]).stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("tiny ") && l.contains("yes")),
        "{list}"
    );
    let path = ferrite(dir.path(), &["models", "path", "tiny"]);
    assert!(String::from_utf8_lossy(&path.stdout)
        .trim()
        .ends_with("tiny-llama.gguf"));
    assert!(ferrite(dir.path(), &["models", "verify", "tiny"])
        .status
        .success());
    // The imported model is usable by name.
    let ask = ferrite(dir.path(), &["ask", "-m", "tiny", "-n", "4", "--raw", "ab"]);
    assert!(
        ask.status.success(),
        "{}",
        String::from_utf8_lossy(&ask.stderr)
    );
    assert!(ferrite(dir.path(), &["models", "rm", "tiny"])
        .status
        .success());
    assert_eq!(
        ferrite(dir.path(), &["models", "path", "tiny"])
            .status
            .code(),
        Some(1)
    );
    // Importing something that is not a model is refused.
    let txt = dir.path().join("x.gguf");
    std::fs::write(&txt, "hello").unwrap();
    assert_eq!(
        ferrite(dir.path(), &["models", "import", txt.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn bench_json_has_llama_bench_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferrite(
        dir.path(),
        &[
            "bench",
            "-m",
            model_path().to_str().unwrap(),
            "-p",
            "32",
            "-n",
            "4",
            "-r",
            "2",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tests = v.as_array().unwrap();
    assert_eq!(tests.len(), 2);
    assert_eq!(tests[0]["n_prompt"], 32);
    assert_eq!(tests[1]["n_gen"], 4);
    for t in tests {
        for f in [
            "n_threads",
            "avg_ts",
            "stddev_ts",
            "model_type",
            "model_size",
        ] {
            assert!(!t[f].is_null(), "missing {f}");
        }
        assert_eq!(t["samples_ts"].as_array().unwrap().len(), 2);
        assert!(t["avg_ts"].as_f64().unwrap() > 0.0);
    }
}
