//! Speculative decoding keeps the target's answers: greedy answers with a
//! draft model or prompt lookup are the goldens (held the way that holds on
//! any build: `common::check_golden`, since a batch of draft tokens rounds
//! differently from one token at a time), a seeded sampled answer is the
//! same text with and without drafts (the sampler draws once per token
//! either way), multi-turn caches stay right, and a draft model with
//! another vocabulary is refused.

use std::ops::ControlFlow;

use ferrite::llm::{
    DraftModel, DraftOptions, Drafter, Engine, GenParams, LoadOptions, Reply, Session,
    SessionOptions,
};

use crate::common::{self, check_golden, engine, golden, GOLDENS};

fn opts() -> SessionOptions {
    SessionOptions {
        ctx_tokens: 1024,
        threads: 2,
        ..Default::default()
    }
}

/// A session on the test model drafting with `how`: "model" (a second
/// context on the same model: a drafter that is always right when greedy)
/// or "lookup".
fn session(how: Option<&str>) -> Session<'static> {
    let e = engine();
    let mut s = e.session(opts()).unwrap();
    let drafter = match how {
        Some("model") => Some(Drafter::Model(Box::new(
            DraftModel::new(e, e, &opts()).unwrap(),
        ))),
        Some("lookup") => Some(Drafter::lookup()),
        _ => None,
    };
    let o = DraftOptions {
        p_min: 0.0,
        ..Default::default()
    };
    s.set_draft(drafter.map(|d| (d, o))).unwrap();
    s
}

fn ask(s: &mut Session<'_>, q: &str, p: &GenParams) -> Reply {
    s.ask(q, p, &mut |_| ControlFlow::Continue(())).unwrap()
}

fn greedy(n: usize) -> GenParams {
    GenParams {
        n_predict: Some(n),
        ..GenParams::greedy()
    }
}

#[test]
fn greedy_answers_with_drafts_are_the_goldens() {
    for how in ["model", "lookup"] {
        for name in GOLDENS {
            let (inp, want) = golden(name);
            let r = ask(&mut session(Some(how)), &inp, &greedy(48));
            check_golden(&inp, &want, &r.text);
            if how == "model" {
                // The same model drafting greedily is right nearly always.
                assert!(
                    r.stats.draft_accepted * 10 >= r.stats.draft_tokens * 8,
                    "{how} {name}: {}",
                    r.stats
                );
            }
        }
    }
}

#[test]
fn lookup_drafts_pay_off_when_the_answer_repeats_the_prompt() {
    let q = "Repeat this list exactly, once: red, green, blue, yellow, purple, orange, black, white, pink, brown.";
    let plain = ask(&mut session(None), q, &greedy(40));
    let spec = ask(&mut session(Some("lookup")), q, &greedy(40));
    assert_eq!(plain.text, spec.text);
    assert!(spec.stats.draft_accepted >= 5, "{}", spec.stats);
    assert_eq!(plain.stats.draft_tokens, 0);
}

#[test]
fn a_seeded_sampled_answer_is_the_same_with_and_without_drafts() {
    let p = GenParams {
        n_predict: Some(48),
        temperature: 0.9,
        seed: 7,
        ..GenParams::default()
    };
    let q = "Write two sentences about a cat.";
    let plain = ask(&mut session(None), q, &p);
    for how in ["model", "lookup"] {
        let spec = ask(&mut session(Some(how)), q, &p);
        assert_eq!(plain.text, spec.text, "{how}");
        if how == "model" {
            // Sampling rejects some of the greedy draft's tokens.
            assert!(
                spec.stats.draft_tokens > spec.stats.draft_accepted,
                "{}",
                spec.stats
            );
        }
    }
}

#[test]
fn follow_up_turns_with_drafts_answer_as_without() {
    let mut plain = session(None);
    let mut spec = session(Some("model"));
    for q in [
        "What is the capital of Japan?",
        "And of France?",
        "Name three colours.",
    ] {
        let a = ask(&mut plain, q, &greedy(24));
        let b = ask(&mut spec, q, &greedy(24));
        assert_eq!(a.text, b.text, "{q}");
        assert_eq!(a.stats.ctx_used, b.stats.ctx_used, "{q}: cache cells");
    }
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Engine::load(
        "tiny",
        &common::write_tiny_llama(dir.path()),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = match DraftModel::new(engine(), &tiny, &opts()) {
        Ok(_) => panic!("a 288-token vocabulary drafted for a 49152-token one"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("vocabularies differ"), "{err}");
    let bad = DraftOptions {
        max: 0,
        ..Default::default()
    };
    let e = session(None)
        .set_draft(Some((Drafter::lookup(), bad)))
        .unwrap_err();
    assert!(e.to_string().contains("--draft-max"), "{e}");
}

#[test]
fn ask_takes_lookup_and_a_draft_model_and_reports_them() {
    let home = tempfile::tempdir().unwrap();
    let model = common::model_path().to_str().unwrap();
    let q = "What is the capital of Japan?";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "ask", "-m", model, "--temp", "0", "-n", "6", "-t", "2", "--stats",
        ];
        args.extend_from_slice(extra);
        args.push(q);
        let out = common::ferrite(home.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{extra:?}: {err}");
        (String::from_utf8_lossy(&out.stdout).to_string(), err)
    };
    let (plain, _) = run(&[]);
    let (drafted, stats) = run(&["--draft", model, "--draft-max", "4"]);
    assert_eq!(plain, drafted);
    assert!(stats.contains("accepted"), "{stats}");
    let (looked, _) = run(&["--lookup"]);
    assert_eq!(plain, looked);
    let out = common::ferrite(
        home.path(),
        &["ask", "-m", model, "--draft", model, "--lookup", q],
    );
    assert!(!out.status.success());
    // The memory check counts both models: the Zero 2 W profile (256 MiB)
    // holds SmolLM2 alone, not twice.
    let zero = [
        "--board",
        "rpi-zero2w",
        "ask",
        "-m",
        model,
        "-n",
        "1",
        "-t",
        "2",
    ];
    let alone = common::ferrite(home.path(), &[&zero[..], &[q]].concat());
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    let both = common::ferrite(home.path(), &[&zero[..], &["--draft", model, q]].concat());
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success() && err.contains("for the model beside it"),
        "{err}"
    );
}

/// `bench --draft` with the model as its own draft: greedy drafts from the
/// same weights are kept (all but near-ties that a batch rounds otherwise),
/// and the table and JSON say so; `--question` needs a drafter.
#[test]
fn bench_draft_measures_drafted_against_plain_decoding() {
    let home = tempfile::tempdir().unwrap();
    let model = common::model_path().to_str().unwrap();
    let base = ["bench", "-m", model, "-n", "12", "-r", "1", "-t", "2"];
    let q = ["--question", "Name the colours of the rainbow."];
    let out = common::ferrite(
        home.path(),
        &[&base[..], &["--draft", model, "--json"], &q].concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["test"], "spec-q1");
    assert_eq!(r["n_gen"], 12);
    let (drafted, kept) = (
        r["n_drafted"].as_u64().unwrap(),
        r["n_accept"].as_u64().unwrap(),
    );
    assert!(drafted > 0 && kept * 10 >= drafted * 8, "{r}");
    assert!(r["avg_ts"].as_f64().unwrap() > 0.0 && r["plain_avg_ts"].as_f64().unwrap() > 0.0);
    assert!(
        r["drafter"].as_str().unwrap().starts_with("draft model"),
        "{r}"
    );
    // The built-in prompts, as a table, with prompt lookup.
    let out = common::ferrite(home.path(), &[&base[..], &["--lookup"]].concat());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for test in ["spec-code", "spec-prose", "spec-edit"] {
        assert!(table.contains(test), "{table}");
    }
    assert!(table.contains("prompt lookup"), "{table}");
    let out = common::ferrite(home.path(), &[&base[..], &q].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--draft MODEL or --lookup"),
        "{err}"
    );
}

#[test]
fn the_console_drafts_and_its_stats_say_so() {
    let home = tempfile::tempdir().unwrap();
    let m = common::model_path().to_str().unwrap();
    for (mode, extra) in [("serve", &["--stdio"][..]), ("chat", &[][..])] {
        let mut args = vec![mode];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-m", m, "-n", "6", "--temp", "0", "-t", "2", "--draft", m]);
        let out = common::ferrite_with_input(
            home.path(),
            &args,
            b"What is the capital of Japan?\n/stats\n",
        );
        let (said, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{mode}: {err}");
        assert!(said.contains("Tokyo"), "{mode}: {said}");
        assert!(
            format!("{said}{err}").contains("accepted"),
            "{mode}: /stats without the draft: {said} {err}"
        );
    }
}

#[test]
fn guesses_stay_within_one_llama_cpp_batch_and_a_cut_answer_leaves_the_cache_right() {
    // A 4-token batch with 16-token drafts: a longer batch would abort in
    // llama.cpp (GGML_ASSERT n_tokens <= n_batch).
    let e = engine();
    let o = SessionOptions {
        batch_tokens: 4,
        ..opts()
    };
    let mut s = e.session(o.clone()).unwrap();
    let d = DraftModel::new(e, e, &o).unwrap();
    let big = DraftOptions {
        max: 16,
        ..Default::default()
    };
    s.set_draft(Some((Drafter::Model(Box::new(d)), big)))
        .unwrap();
    let mut plain = e.session(o).unwrap();
    // A stop string ends the first answer while guesses are pending; the
    // next turn must see the same cache as without drafts.
    let cut = GenParams {
        stop: vec!["Japan".into()],
        ..greedy(24)
    };
    for (q, p) in [
        ("What is the capital of Japan?", &cut),
        ("And of France?", &greedy(16)),
    ] {
        let a = ask(&mut plain, q, p);
        let b = ask(&mut s, q, p);
        assert_eq!(a.text, b.text, "{q}");
        assert_eq!(a.stats.ctx_used, b.stats.ctx_used, "{q}");
    }
}

/// The raw body of `GET path` on `port`.
fn get_text(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

/// A counter's value in `/metrics`' text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("ferrite_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// The HTTP API drafts too: three greedy answers at once on a server with
/// the model as its own draft (one draft context per slot) are the
/// goldens, and `/metrics` counts the draft tokens proposed and kept (the
/// same weights' greedy guesses are nearly all kept). With prompt lookup
/// the answers are the goldens as well.
#[test]
fn the_http_api_drafts_each_slot() {
    let model = common::model_path().to_str().unwrap();
    for extra in [&["--draft", model][..], &["--lookup"][..]] {
        let args = [extra, &["--parallel", "3", "--draft-max", "4"][..]].concat();
        let srv = crate::http::start_in(tempfile::tempdir().unwrap().path(), &args);
        let port: u16 = srv.base.rsplit(':').next().unwrap().parse().unwrap();
        let answers: Vec<(String, String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = GOLDENS
                .iter()
                .map(|name| {
                    s.spawn(move || {
                        let (inp, want) = golden(name);
                        let body = serde_json::json!({
                            "model": crate::http::model_name(),
                            "temperature": 0,
                            "max_tokens": 48,
                            "messages": [{"role": "user", "content": inp}],
                        });
                        let (status, v) =
                            crate::http::request(port, "POST", "/v1/chat/completions", Some(&body));
                        assert_eq!(status, 200, "{extra:?} {name}: {v}");
                        let text = v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        (inp, want, text)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (inp, want, text) in &answers {
            check_golden(inp, want, text);
        }
        let m = get_text(port, "/metrics");
        let (drafted, kept) = (
            counter(&m, "draft_tokens_total"),
            counter(&m, "draft_accepted_total"),
        );
        if extra[0] == "--draft" {
            assert!(drafted > 0 && kept * 10 >= drafted * 8, "{m}");
        } else {
            assert!(kept <= drafted, "{m}");
        }
    }
}
