//! The system prompt's KV state on disk (`--prompt-cache`): saved once,
//! loaded by the next session (and the next process) instead of evaluated,
//! with the same answer; a corrupted or cut file is ignored and replaced,
//! never handed to llama.cpp; another system prompt is another state.

use std::ops::ControlFlow;

use ferrite::llm::{GenParams, PromptCache, Session, SessionOptions, Warmed};

use crate::common::{self, engine};

const SYSTEM: &str = "You are the voice assistant of a small house in the mountains. \
    You answer in one short sentence, you never make things up, and when you \
    do not know something you say so. The house has a kitchen, a garden and a \
    workshop, and its owner likes geography questions.";

fn session(system: &str) -> Session<'static> {
    let mut s = engine()
        .session(SessionOptions {
            ctx_tokens: 1024,
            threads: 2,
            ..Default::default()
        })
        .unwrap();
    s.set_system(Some(system.into()));
    s
}

fn answer(s: &mut Session<'_>) -> ferrite::llm::Reply {
    let p = GenParams {
        n_predict: Some(12),
        ..GenParams::greedy()
    };
    s.ask("What is the capital of Japan?", &p, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
}

#[test]
fn a_saved_prompt_state_is_loaded_and_answers_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PromptCache::new(dir.path(), "sha-of-the-model").unwrap();
    let mut first = session(SYSTEM);
    let Warmed::Saved(n) = first.warm(&cache).unwrap() else {
        panic!("nothing saved")
    };
    assert!(n > 40, "{n} tokens");
    let a = answer(&mut first);
    let mut second = session(SYSTEM);
    assert_eq!(second.warm(&cache).unwrap(), Warmed::Loaded(n));
    let b = answer(&mut second);
    assert_eq!(a.text, b.text);
    assert!(b.text.contains("Tokyo"), "{}", b.text);
    assert_eq!(
        b.stats.cached_tokens, n,
        "the prompt was not evaluated again"
    );
    // Another system prompt is another state.
    let mut other = session(&SYSTEM.replace("mountains", "city"));
    assert!(matches!(other.warm(&cache).unwrap(), Warmed::Saved(_)));
    // Another model (its sha256) too.
    let elsewhere = PromptCache::new(dir.path(), "another-model").unwrap();
    assert!(matches!(
        session(SYSTEM).warm(&elsewhere).unwrap(),
        Warmed::Saved(_)
    ));
}

#[test]
fn a_damaged_state_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PromptCache::new(dir.path(), "m").unwrap();
    let Warmed::Saved(n) = session(SYSTEM).warm(&cache).unwrap() else {
        panic!()
    };
    let state = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "state"))
        .unwrap();
    let good = std::fs::read(&state).unwrap();
    // A flipped byte in the middle, then the file cut in half.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    for damaged in [bad, good[..good.len() / 2].to_vec()] {
        std::fs::write(&state, &damaged).unwrap();
        let mut s = session(SYSTEM);
        assert_eq!(s.warm(&cache).unwrap(), Warmed::Saved(n));
        assert!(answer(&mut s).text.contains("Tokyo"));
        // Replaced by a good one.
        assert_eq!(session(SYSTEM).warm(&cache).unwrap(), Warmed::Loaded(n));
    }
    // No system prompt: nothing to keep.
    let mut bare = engine().session(SessionOptions::default()).unwrap();
    assert_eq!(bare.warm(&cache).unwrap(), Warmed::Nothing);
}

#[test]
fn ask_reuses_the_state_across_processes() {
    let home = tempfile::tempdir().unwrap();
    let m = common::model_path().to_str().unwrap();
    let run = || {
        let out = common::ferrite(
            home.path(),
            &[
                "ask",
                "-v",
                "-m",
                m,
                "--temp",
                "0",
                "-n",
                "6",
                "-t",
                "2",
                "--prompt-cache",
                "--system",
                SYSTEM,
                "What is the capital of Japan?",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        (String::from_utf8_lossy(&out.stdout).to_string(), err)
    };
    let (a, first) = run();
    let (b, second) = run();
    assert_eq!(a, b);
    assert!(first.contains("warmed=Saved("), "{first}");
    assert!(second.contains("warmed=Loaded("), "{second}");
}

#[test]
fn the_console_loads_the_state_at_its_next_start() {
    let home = tempfile::tempdir().unwrap();
    let m = common::model_path().to_str().unwrap();
    for (i, want) in ["warmed=Saved(", "warmed=Loaded("].iter().enumerate() {
        let out = common::ferrite_with_input(
            home.path(),
            &[
                "serve",
                "--stdio",
                "-v",
                "-m",
                m,
                "--temp",
                "0",
                "-n",
                "6",
                "-t",
                "2",
                "--prompt-cache",
                "--system",
                SYSTEM,
            ],
            b"What is the capital of Japan?\n",
        );
        let (said, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{err}");
        assert!(said.contains("Tokyo"), "start {i}: {said}");
        assert!(err.contains(want), "start {i}: {err}");
    }
}

/// A chat request with `SYSTEM` and `question` to the server on `port`:
/// the answer and `usage.prompt_tokens_details.cached_tokens`.
fn ask_http(port: u16, question: &str) -> (String, u64) {
    ask_http_with(port, Some(SYSTEM), question)
}

/// `ask_http` with `system` as the system message, or none.
fn ask_http_with(port: u16, system: Option<&str>, question: &str) -> (String, u64) {
    let mut messages = vec![serde_json::json!({"role": "user", "content": question})];
    if let Some(s) = system {
        messages.insert(0, serde_json::json!({"role": "system", "content": s}));
    }
    let body = serde_json::json!({
        "model": crate::http::model_name(),
        "temperature": 0,
        "max_tokens": 12,
        "messages": messages,
    });
    let (status, v) = crate::http::request(port, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(status, 200, "{v}");
    (
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

/// `serve --http --prompt-cache`: the first request with a system prompt
/// saves its standing prefix's state; after a restart the first request
/// with it loads that state instead of evaluating it (OpenAI's
/// `cached_tokens` says so) and answers as a server without the cache does;
/// `serve --system` gives a chat without a system message that prompt.
#[test]
fn the_http_api_keeps_system_prompts_across_restarts() {
    let home = tempfile::tempdir().unwrap();
    let port_of = |srv: &crate::http::Server| -> u16 {
        srv.base.rsplit(':').next().unwrap().parse().unwrap()
    };
    let plain = {
        let srv = crate::http::start_in(home.path(), &[]);
        ask_http(port_of(&srv), "What is the capital of Japan?")
    };
    assert_eq!(plain.1, 0, "nothing cached in a new server");
    let states = || {
        std::fs::read_dir(home.path().join("prompt-cache"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "state")
                })
                .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(states(), 0);
    {
        let srv = crate::http::start_in(home.path(), &["--prompt-cache"]);
        let first = ask_http(port_of(&srv), "Name a river in France.");
        assert_eq!(first.1, 0, "{first:?}");
    }
    assert_eq!(states(), 1, "the standing prefix was saved once");
    for f in std::fs::read_dir(home.path().join("prompt-cache")).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "as every file in the store");
    }
    let srv = crate::http::start_in(home.path(), &["--prompt-cache"]);
    let again = ask_http(port_of(&srv), "What is the capital of Japan?");
    assert!(again.1 >= 16, "the prefix came from disk: {again:?}");
    assert_eq!(again.0, plain.0);
    // The same server keeps it in the slot for the next question.
    let next = ask_http(port_of(&srv), "Name a river in France.");
    assert!(next.1 >= again.1, "{next:?}");
    drop(srv);
    // serve --system is the system prompt of a chat without one: the same
    // standing prefix, so the same state.
    let srv = crate::http::start_in(home.path(), &["--prompt-cache", "--system", SYSTEM]);
    let bare = ask_http_with(port_of(&srv), None, "What is the capital of Japan?");
    assert_eq!(bare, again, "--system stands in for the system message");
}
