//! Public bug reports replayed against ferrite (issue #12): each input that
//! made ferrite crash, exit with a panic, lose a conversation or accept what
//! it should refuse, and the right behaviour. Every error is one line on
//! stderr with exit 1 (2 for usage errors), never a signal or exit 101.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrite::gguf::Value;

use crate::common::{
    ferrite, ferrite_bin, ferrite_with_input, model_path, rewrite_gguf, write_tiny_llama,
};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One line on stderr, exit `code`, no panic and no signal.
fn one_line_error(o: &Output, code: i32) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "status {:?}: {e}", o.status);
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

/// The SmolLM2 file with token 300 renamed to the text of token 301.
fn duplicate_token_model(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("dup.gguf");
    rewrite_gguf(model_path(), &p, |kv| {
        if let Some(Value::Array(_, t)) = kv.get_mut("tokenizer.ggml.tokens") {
            t[300] = t[301].clone();
        }
    });
    p
}

/// 2.1: a vocabulary that repeats a token aborted llama.cpp (GGML_ASSERT).
#[test]
fn a_repeated_vocabulary_token_is_one_clear_error_everywhere() {
    let home = tempfile::tempdir().unwrap();
    let dup = duplicate_token_model(home.path());
    let d = dup.to_str().unwrap();
    let e = one_line_error(&ferrite(home.path(), &["ask", "-m", d, "hi"]), 1);
    assert!(e.contains("token 301 repeats token 300"), "{e}");
    let info = ferrite(home.path(), &["models", "info", d]);
    assert!(
        stdout(&info).contains("loadable:       no"),
        "{}",
        stdout(&info)
    );
    let e = one_line_error(
        &ferrite(home.path(), &["models", "import", d, "--name", "dup"]),
        1,
    );
    assert!(e.contains("repeats token"), "{e}");
    // A store that holds it anyway (copied in by hand): `/model dup` is an
    // error line and the service stays on its model.
    crate::common::put_in_store(home.path(), "dup", &dup);
    let model = model_path().to_str().unwrap();
    let out = ferrite_with_input(
        home.path(),
        &["serve", "--stdio", "-m", model, "--temp", "0", "-n", "24"],
        b"/model dup\nWhat is the capital of Japan?\n",
    );
    let s = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.contains("error: cannot switch to dup"), "{s}");
    assert!(s.contains("Tokyo"), "{s}");
}

/// 2.2: every command's output goes through one writer; a closed pipe is a
/// quiet exit 0 (`ferrite models list | grep -q store` panicked).
#[test]
fn a_closed_stdout_pipe_is_a_quiet_exit() {
    let home = tempfile::tempdir().unwrap();
    let tiny = write_tiny_llama(home.path());
    let model = model_path().to_str().unwrap();
    let runs: [&[&str]; 7] = [
        &["models", "list"],
        &["board", "list"],
        &["board", "show"],
        &["models", "info", tiny.to_str().unwrap()],
        &["models", "info", "--json", model],
        &["ask", "-m", model, "-n", "4", "hi"],
        &[
            "bench",
            "-m",
            tiny.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
        ],
    ];
    for args in runs {
        // The read end is closed before ferrite writes anything.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(ferrite_bin())
            .args(args)
            .env("FERRITE_HOME", home.path())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

/// 2.3: one line that is not UTF-8 is one error; the chat goes on.
#[test]
fn chat_survives_a_bad_line() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let out = ferrite_with_input(
        home.path(),
        &["chat", "-m", model, "--temp", "0", "-n", "24"],
        b"Hello\nI like caf\xe9 au lait\nWhat is the capital of Japan?\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "error: line is not valid UTF-8: ignored"
    );
    assert!(stdout(&out).contains("Tokyo"), "{}", stdout(&out));
}

/// Collect what `r` yields into a shared buffer, on a thread, until EOF.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// Wait until `pred` holds for the text in `buf`; returns that text.
fn wait_until(
    buf: &Mutex<Vec<u8>>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let t0 = Instant::now();
    loop {
        let s = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        if pred(&s) {
            return s;
        }
        assert!(t0.elapsed() < timeout, "no {what} in {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 2.4: Ctrl-C stops the answer and keeps the conversation; Ctrl-C at the
/// prompt ends the chat (exit 130, as llama.cpp's).
#[test]
fn ctrl_c_in_chat_stops_the_answer_not_the_chat() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(ferrite_bin())
        .args(["chat", "-m", model_path().to_str().unwrap()])
        .args(["--temp", "0", "-n", "400", "-t", "2", "--stats"])
        .env("FERRITE_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let sigint = |child: &std::process::Child| crate::common::signal(child.id(), "INT");
    let t = Duration::from_secs(120);
    stdin
        .write_all(b"Write a long story about a dragon.\n")
        .unwrap();
    // Some of the story, then Ctrl-C.
    wait_until(&out, "answer", t, |s| s.len() >= 40);
    sigint(&child);
    wait_until(&out, "cancel mark", t, |s| s.contains(" [cancelled]\n"));
    stdin.write_all(b"What is the capital of Japan?\n").unwrap();
    wait_until(&out, "Tokyo", t, |s| s.contains("Tokyo"));
    // The second answer has ended once its stats line is out (a fixed sleep
    // here raced a slow machine: the Ctrl-C cancelled the answer instead,
    // and the chat waited on stdin forever). Then Ctrl-C at the prompt ends
    // the chat. The stats line is written just before the chat marks the
    // answer over, so a Ctrl-C in that instant only cancels; repeat it, as a
    // user would, until the chat ends.
    let prompts = |s: &str| s.lines().filter(|l| l.contains("prompt")).count();
    let errors = wait_until(&err, "stats for the second answer", t, |s| prompts(s) >= 2);
    let t0 = Instant::now();
    let status = loop {
        sigint(&child);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("Ctrl-C at the prompt did not end the chat");
        }
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    // The second question was asked in the same conversation: its prompt
    // reused the first exchange from the KV cache.
    let second = errors
        .lines()
        .filter(|l| l.contains("prompt"))
        .nth(1)
        .unwrap();
    assert!(!second.contains("(0 cached)"), "{second}");
}

/// 2.6: numbers are checked against what they mean before llama.cpp sees
/// them; llama.cpp's own values (-1, -2) keep their meaning.
#[test]
fn numeric_flags_are_range_checked() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let e = one_line_error(
        &ferrite(
            home.path(),
            &[
                "ask",
                "-m",
                model,
                "--repeat-last-n",
                "2000000000",
                "--repeat-penalty",
                "1.1",
                "hi",
            ],
        ),
        1,
    );
    assert!(e.contains("repeat-last-n"), "{e}");
    let e = one_line_error(
        &ferrite(
            home.path(),
            &["ask", "-m", model, "--top-k", "100000", "hi"],
        ),
        1,
    );
    assert!(e.contains("vocabulary"), "{e}");
    let e = one_line_error(
        &ferrite(home.path(), &["ask", "-m", model, "-c", "100000", "hi"]),
        1,
    );
    assert!(e.contains("trained on"), "{e}");
    one_line_error(
        &ferrite(home.path(), &["ask", "-m", model, "-n", "-3", "hi"]),
        2,
    );
    one_line_error(
        &ferrite(
            home.path(),
            &["perplexity", "-m", model, "-f", "/dev/null", "-c", "0"],
        ),
        2,
    );
    one_line_error(
        &ferrite(home.path(), &["bench", "-m", model, "-p", "9000000"]),
        2,
    );
    for args in [
        &[
            "--repeat-last-n",
            "-1",
            "--repeat-penalty",
            "1.1",
            "-n",
            "4",
        ][..],
        &["-n", "-2", "-c", "64"],
        &["--seed", "-1", "--temp", "0.7", "-n", "4"],
    ] {
        let mut full = vec!["ask", "-m", model];
        full.extend_from_slice(args);
        full.push("hi");
        let o = ferrite(home.path(), &full);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    // The same checks on the console.
    let out = ferrite_with_input(
        home.path(),
        &["serve", "--stdio", "-m", model, "-n", "8"],
        b"/set top-k 100000\n/set top-k 40\n",
    );
    let s = stdout(&out);
    assert!(
        s.contains("top-k 100000 is more than the vocabulary's 49152 tokens"),
        "{s}"
    );
    assert!(s.contains("top-k = 40"), "{s}");
}

/// 2.8: a base model without a chat template is completed as plain text,
/// not wrapped in ChatML it never saw; every manifest model answers with the
/// default flags.
#[test]
fn every_manifest_model_answers_with_default_flags() {
    let manifest = ferrite::models::Manifest::parse(ferrite::models::BUILTIN, "builtin").unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = crate::common::store();
    for m in manifest
        .models
        .iter()
        .filter(|m| m.kind == ferrite::models::ModelKind::Gguf)
    {
        let path = store.pull(m).unwrap();
        let out = ferrite(
            home.path(),
            &[
                "ask",
                "-m",
                path.to_str().unwrap(),
                "-n",
                "16",
                "The capital of France is",
            ],
        );
        let s = stdout(&out);
        assert!(out.status.success(), "{}: {}", m.name, stderr(&out));
        assert!(s.trim().len() > 2, "{}: empty answer", m.name);
        assert!(
            !s.contains("<|im_") && !s.contains("<start_of_turn>"),
            "{}: {s}",
            m.name
        );
    }
}

/// 2.9: nothing typed on the console ends `serve`: a speech model, a model
/// the board's memory budget refuses, all one error line; `/models` lists
/// only what can answer.
#[test]
fn a_failed_model_switch_keeps_the_running_model() {
    let home = tempfile::tempdir().unwrap();
    let pull = |name: &str| {
        let o = ferrite(home.path(), &["models", "pull", name]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    };
    let model = model_path().to_str().unwrap();
    let o = ferrite(
        home.path(),
        &["models", "import", model, "--name", "smollm2-135m"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    pull("whisper-base");
    pull("gemma3-270m");
    // A board with room for SmolLM2 (98 MB) but not for gemma-3 (253 MB).
    let board = home.path().join("small.toml");
    std::fs::write(&board, "name = \"small\"\nmemory_budget_mb = 300\n").unwrap();
    for json in [false, true] {
        let (input, args): (&[u8], &[&str]) = if json {
            (
                b"{\"cmd\":\"model whisper-base\"}\n{\"cmd\":\"model gemma3-270m\"}\n{\"cmd\":\"models\"}\n{\"q\":\"What is the capital of Japan?\"}\n",
                &["--json"],
            )
        } else {
            (
                b"/model whisper-base\n/model gemma3-270m\n/models\nWhat is the capital of Japan?\n",
                &[],
            )
        };
        let mut full = vec![
            "--board",
            board.to_str().unwrap(),
            "serve",
            "--stdio",
            "--temp",
            "0",
            "-n",
            "24",
            "-c",
            "512",
        ];
        full.extend_from_slice(args);
        let out = ferrite_with_input(home.path(), &full, input);
        let s = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(s.contains("cannot switch to whisper-base"), "{s}");
        assert!(s.contains("cannot switch to gemma3-270m"), "{s}");
        assert!(s.contains("memory"), "{s}");
        assert!(
            s.contains("smollm2-135m (in use)") && !s.contains("whisper-base\\n"),
            "{s}"
        );
        assert!(
            !s.contains("whisper-base (") && !s.contains("\nwhisper-base\n"),
            "{s}"
        );
        assert!(s.contains("Tokyo"), "{s}");
    }
}

/// 2.10: a name the manifest pins takes only its pinned bytes.
#[test]
fn a_pinned_name_takes_only_the_pinned_file() {
    let home = tempfile::tempdir().unwrap();
    let tiny = write_tiny_llama(home.path());
    let e = one_line_error(
        &ferrite(
            home.path(),
            &[
                "models",
                "import",
                tiny.to_str().unwrap(),
                "--name",
                "smollm2-135m",
            ],
        ),
        1,
    );
    assert!(e.contains("pinned by the manifest"), "{e}");
    let o = ferrite(home.path(), &["models", "list"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("smollm2-135m") && l.contains(" no ")),
        "{}",
        stdout(&o)
    );
    // The pinned file itself imports (a side-load without a network).
    let o = ferrite(
        home.path(),
        &[
            "models",
            "import",
            model_path().to_str().unwrap(),
            "--name",
            "smollm2-135m",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ferrite(home.path(), &["models", "verify", "smollm2-135m"])
        .status
        .success());
}

/// 2.11: `models verify` racing `models rm` never reaches a panic.
#[test]
fn verify_racing_rm_never_panics() {
    let home = tempfile::tempdir().unwrap();
    let tiny = write_tiny_llama(home.path());
    for _ in 0..10 {
        let o = ferrite(
            home.path(),
            &["models", "import", tiny.to_str().unwrap(), "--name", "t"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let h = home.path().to_path_buf();
        let rm = std::thread::spawn(move || ferrite(&h, &["models", "rm", "t"]));
        let v = ferrite(home.path(), &["models", "verify", "t"]);
        assert!(v.status.code().is_some_and(|c| c <= 1), "{v:?}");
        assert!(
            v.status.signal().is_none() && !stderr(&v).contains("panicked"),
            "{}",
            stderr(&v)
        );
        rm.join().unwrap();
    }
}
