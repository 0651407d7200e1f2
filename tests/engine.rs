//! The engine on the real SmolLM2-135M Q4_1 model: answers, goldens, sampling
//! reproducibility, stop strings, `-n`, UTF-8 holdback, beam search, the
//! context budget and perplexity.

use std::ops::ControlFlow;

use ferrite::llm::{Finish, GenParams, Message, Reply, Role, Session, SessionOptions};

use crate::common::{check_golden, engine, golden, GOLDENS, LOGIT_MARGIN};
use crate::eqnice;

fn session(max_beams: usize) -> Session<'static> {
    engine()
        .session(SessionOptions {
            ctx_tokens: 1024,
            threads: 2,
            max_beams,
            ..Default::default()
        })
        .unwrap()
}

fn greedy(n: usize) -> GenParams {
    GenParams {
        n_predict: Some(n),
        ..GenParams::greedy()
    }
}

fn ask(s: &mut Session<'_>, q: &str, p: &GenParams) -> Reply {
    s.ask(q, p, &mut |_| ControlFlow::Continue(())).unwrap()
}

#[test]
fn capital_of_japan_is_tokyo() {
    let mut s = session(0);
    let r = ask(&mut s, "What is the capital of Japan?", &greedy(64));
    assert!(r.text.contains("Tokyo"), "{}", r.text);
    assert_eq!(r.finish, Finish::EndOfGeneration);
    let st = &r.stats;
    assert!(st.prompt_tokens > 5 && st.gen_tokens > 0);
    assert!(st.ttft_ms > 0.0 && st.tokens_per_s() > 0.0 && st.load_ms > 0.0);
}

/// The goldens: `NAME.inp` asked with greedy decoding gives `NAME.out` (then
/// the end of the turn), checked as `check_golden` describes, so they hold on
/// every build of ggml (AVX2, AVX-512, NEON), not only the one that wrote them.
#[test]
fn golden_greedy_answers() {
    for name in GOLDENS {
        let (inp, want) = golden(name);
        let r = ask(&mut session(0), &inp, &greedy(48));
        check_golden(&inp, &want, &r.text);
    }
}

/// The answer CI compares exactly between x86 and the boards (`.ci/run`:
/// the first 6 tokens of the capital golden, aarch64 and armv7 under qemu)
/// must be provably stable: each of those tokens leads its rival by more
/// than the margin two builds can differ by.
#[test]
fn cross_build_smoke_answer_has_no_near_tie() {
    const SMOKE_TOKENS: usize = 6;
    let (inp, want) = golden("capital");
    let scores =
        ferrite::llm::score_answer(engine(), &[Message::new(Role::User, &inp)], &want, true, 2)
            .unwrap();
    for s in &scores[..SMOKE_TOKENS] {
        assert!(
            s.lead() > LOGIT_MARGIN,
            "{:?} leads by only {} (margin {LOGIT_MARGIN}): {scores:#?}",
            s.piece,
            s.lead()
        );
    }
    let smoke: String = scores[..SMOKE_TOKENS]
        .iter()
        .map(|s| s.piece.as_str())
        .collect();
    assert_eq!(smoke, "The capital of Japan is Tokyo");
    let r = ask(&mut session(0), &inp, &greedy(SMOKE_TOKENS));
    eqnice!(smoke, r.text);
}

/// Not a check: writes every golden's teacher-forced scores as JSON to
/// `$FERRITE_SCORES_OUT`, to measure how far builds differ
/// (benches/golden-margins.py compares two such files).
#[test]
#[ignore]
fn golden_scores_dump() {
    let out = std::env::var("FERRITE_SCORES_OUT").expect("set FERRITE_SCORES_OUT");
    let all: Vec<_> = GOLDENS
        .iter()
        .map(|name| {
            let (inp, want) = golden(name);
            let s = ferrite::llm::score_answer(
                engine(),
                &[Message::new(Role::User, &inp)],
                &want,
                true,
                2,
            )
            .unwrap();
            (name, s)
        })
        .collect();
    std::fs::write(out, serde_json::to_string_pretty(&all).unwrap()).unwrap();
}

#[test]
fn seeded_sampling_is_reproducible() {
    let p = |seed| GenParams {
        n_predict: Some(24),
        temperature: 1.0,
        seed,
        ..GenParams::default()
    };
    let q = "Write a short poem about the sea.";
    let a = ask(&mut session(0), q, &p(42)).text;
    let b = ask(&mut session(0), q, &p(42)).text;
    eqnice!(a, b);
    let others: Vec<String> = (43..46)
        .map(|s| ask(&mut session(0), q, &p(s)).text)
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "three other seeds all gave {a:?}"
    );
}

#[test]
fn stop_strings_and_n_predict_are_honoured() {
    let q = "Name three colors.";
    let full = ask(&mut session(0), q, &greedy(40)).text;
    assert!(full.contains("Blue"), "{full}");
    let p = GenParams {
        stop: vec!["Blue".into()],
        ..greedy(40)
    };
    let r = ask(&mut session(0), q, &p);
    assert_eq!(r.finish, Finish::StopString);
    assert!(!r.text.contains("Blue"));
    assert!(
        full.starts_with(&r.text),
        "{:?} is not a prefix of {full:?}",
        r.text
    );
    let r = ask(&mut session(0), q, &greedy(5));
    assert_eq!(r.finish, Finish::Length);
    assert_eq!(r.stats.gen_tokens, 5);
}

#[test]
fn multibyte_characters_are_held_until_whole() {
    let mut s = session(0);
    let mut pieces = Vec::new();
    let r = s
        .ask(
            "Write three emoji that show happiness.",
            &greedy(40),
            &mut |p| {
                pieces.push(p.to_string());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert!(
        r.text.chars().any(|c| c.len_utf8() == 4),
        "no emoji in {:?}",
        r.text
    );
    // One call per token; tokens that ended inside a character showed nothing.
    assert_eq!(pieces.len(), r.stats.gen_tokens);
    assert!(
        pieces.iter().any(String::is_empty),
        "no token was held back"
    );
    eqnice!(r.text, pieces.concat());
}

#[test]
fn beam_of_one_is_greedy_and_wider_beams_answer() {
    for q in ["Name three colors.", "What is the capital of Japan?"] {
        let g = ask(&mut session(1), q, &greedy(32));
        let b = ask(
            &mut session(1),
            q,
            &GenParams {
                beams: 1,
                ..greedy(32)
            },
        );
        eqnice!(g.text, b.text);
    }
    let mut s = session(4);
    let r = ask(
        &mut s,
        "What is the capital of Japan?",
        &GenParams {
            beams: 4,
            ..greedy(48)
        },
    );
    assert!(r.text.contains("Tokyo"), "{}", r.text);
    // The session goes on normally after a beam search.
    let r2 = ask(&mut s, "And of Italy?", &greedy(32));
    assert!(r2.stats.cached_tokens > 0);
}

#[test]
fn follow_up_turns_reuse_the_cache() {
    let mut s = session(0);
    s.set_system(Some("You are a concise assistant.".into()));
    let r1 = ask(&mut s, "What is the capital of Japan?", &greedy(32));
    let r2 = ask(&mut s, "What about Germany?", &greedy(32));
    assert!(
        r2.stats.cached_tokens >= r1.stats.prompt_tokens,
        "{:?}",
        r2.stats
    );
    assert_eq!(s.history().len(), 4);
    s.reset();
    assert!(s.history().is_empty());
    let r3 = ask(&mut s, "What is the capital of Japan?", &greedy(32));
    assert_eq!(r3.stats.cached_tokens, 0);
    eqnice!(r1.text, r3.text);
}

#[test]
fn long_conversations_drop_old_turns_instead_of_failing() {
    let mut s = engine()
        .session(SessionOptions {
            ctx_tokens: 256,
            threads: 2,
            ..Default::default()
        })
        .unwrap();
    for i in 0..12 {
        let r = ask(
            &mut s,
            &format!("Tell me one fact about the number {i}."),
            &greedy(40),
        );
        assert!(r.stats.ctx_used <= 256);
    }
    assert!(s.history().len() < 24, "nothing was dropped");
}

#[test]
fn cancelling_stops_within_one_token() {
    let mut s = session(0);
    let mut calls = 0;
    let r = s
        .ask(
            "Write a long story about a dragon.",
            &greedy(200),
            &mut |_| {
                calls += 1;
                if calls == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
    assert_eq!(r.finish, Finish::Cancelled);
    assert_eq!(r.stats.gen_tokens, 3);
}

#[test]
fn perplexity_of_english_text_is_plausible() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(3)
        + &"Paris is the capital and most populous city of France. It is located on the Seine river, \
            in the north of the country. The city is known for its museums, its architecture and \
            its cafes. Millions of visitors come every year to see the Eiffel Tower and the Louvre. "
            .repeat(8);
    let r = ferrite::llm::perplexity(engine(), &text, (128, None), &opts2(), &mut |_, _, _| {})
        .unwrap();
    assert!(r.chunks.len() >= 2);
    // Repeated text is easy to predict: far below a uniform guess over 49152.
    assert!(r.ppl > 1.0 && r.ppl < 50.0, "ppl {}", r.ppl);
    assert!(r.ppl_err >= 0.0);
    // Too little text is a clear error, as in llama-perplexity.
    let e = ferrite::llm::perplexity(engine(), "short", (128, None), &opts2(), &mut |_, _, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("at least 256 tokens"), "{e}");
}

fn opts2() -> SessionOptions {
    SessionOptions {
        threads: 2,
        ..Default::default()
    }
}
