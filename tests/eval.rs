//! `ferrite eval`, proved against the reference packages and the real
//! model: BLEU and chrF equal sacrebleu's and ROUGE-L equals rouge-score's on
//! the same hypotheses and references (tricky strings, and the model's own
//! answers); the teacher-forced log-likelihood behind `perplexity` equals a
//! log-softmax of llama.cpp's logits for the whole sequence at once;
//! `accuracy` holds answers to the label set; bad data are clear errors.
//! The adapter's gain (and `--replay`) are measured in tests/finetune.rs,
//! where the adapters are trained.

use std::path::Path;

use ferrite::eval::metrics;
use ferrite::llm::{Message, Role, SessionOptions};

use crate::common::{engine, ferrite, model_path, python_ref};

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// sacrebleu's and rouge-score's numbers for `pairs` (hypothesis, reference).
fn reference_scores(pairs: &[(String, String)]) -> serde_json::Value {
    let input = serde_json::to_vec(pairs).unwrap();
    let out = python_ref(
        "text_metrics.py",
        Path::new("-"),
        &input,
        "sacrebleu and rouge-score",
    );
    serde_json::from_str(&out).unwrap()
}

/// `ferrite eval -m MODEL ARGS --json` in `home`; it must succeed. Its report.
fn eval_json(home: &Path, args: &[&str]) -> serde_json::Value {
    let m = model_path().to_str().unwrap();
    let all = [&["eval", "-m", m][..], args, &["--json"]].concat();
    let o = ferrite(home, &all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A corpus score of an eval report, by metric name.
fn corpus_score(v: &serde_json::Value, name: &str) -> f64 {
    v["corpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == name)
        .unwrap_or_else(|| panic!("{name} in {v}"))[1]
        .as_f64()
        .unwrap()
}

fn close(what: &str, ours: f64, theirs: &serde_json::Value, tol: f64) {
    let theirs = theirs.as_f64().unwrap();
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: ferrite {ours}, reference {theirs}"
    );
}

/// Check per-pair and corpus scores of `pairs` against the references.
fn check_against_references(pairs: &[(String, String)]) {
    let r = reference_scores(pairs);
    let mut bleu = metrics::BleuStats::default();
    let mut chrf = metrics::ChrfStats::default();
    for (i, (h, rf)) in pairs.iter().enumerate() {
        let what = format!("{h:?} vs {rf:?}");
        let b = metrics::bleu_stats(h, rf);
        let c = metrics::chrf_stats(h, rf);
        close(
            &format!("sentence BLEU of {what}"),
            metrics::bleu_score(&b, true),
            &r["sentence_bleu"][i],
            0.01,
        );
        close(
            &format!("chrF of {what}"),
            metrics::chrf_score(&c),
            &r["sentence_chrf"][i],
            0.01,
        );
        close(
            &format!("ROUGE-L of {what}"),
            metrics::rouge_l(h, rf),
            &r["rouge_l"][i],
            1e-4,
        );
        bleu += b;
        chrf += c;
    }
    close(
        "corpus BLEU",
        metrics::bleu_score(&bleu, false),
        &r["corpus_bleu"],
        0.01,
    );
    close(
        "corpus chrF",
        metrics::chrf_score(&chrf),
        &r["corpus_chrf"],
        0.01,
    );
}

#[test]
fn bleu_chrf_and_rouge_l_match_sacrebleu_and_rouge_score() {
    let pairs: Vec<(String, String)> = [
        ("The cat sat on the mat.", "The cat sat on the mat."),
        ("The cat is on the mat.", "The cat sat on the mat."),
        ("It costs $3.50, ok?", "It costs 3.50 dollars, okay?"),
        ("From 1990-2000 &amp; later", "from 1990 - 2000 & later"),
        ("Le café était naïve, très naïve!", "Le café est naïf."),
        ("", "Something to say."),
        (
            "word",
            "a much longer reference sentence with many words in it",
        ),
        ("the the the the the the", "the cat"),
        ("fn main() { x += 1; }", "fn main() { x = x + 1; }"),
        (
            "U.S.A. and e.g. 1,000,000 people",
            "The U.S.A. has 1,000,000 people, e.g.",
        ),
        ("line one-\nline two\nthree", "line oneline two three"),
        ("Completely different words here", "Nothing matches at all"),
        ("Bees make honey.", "Bees make honey and wax."),
        ("  spaced   out  ", "spaced out"),
        (
            "\"Quoted\" (parenthesised) [bracketed] {braced}",
            "Quoted parenthesised bracketed braced",
        ),
    ]
    .iter()
    .map(|(h, r)| (h.to_string(), r.to_string()))
    .collect();
    check_against_references(&pairs);
}

#[test]
fn eval_scores_the_model_s_answers_as_the_references_do() {
    let home = tempfile::tempdir().unwrap();
    let v = eval_json(
        home.path(),
        &["--data", &data("facts-test.jsonl"), "-n", "32"],
    );
    let examples = v["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 8);
    let pairs: Vec<(String, String)> = examples
        .iter()
        .map(|e| {
            let a = e["answer"].as_str().unwrap().to_string();
            assert!(!a.is_empty(), "{e}");
            (a, e["reference"].as_str().unwrap().to_string())
        })
        .collect();
    check_against_references(&pairs);
    let r = reference_scores(&pairs);
    let corpus = |name: &str| corpus_score(&v, name);
    close(
        "the report's corpus BLEU",
        corpus("bleu"),
        &r["corpus_bleu"],
        0.01,
    );
    close(
        "the report's corpus chrF",
        corpus("chrf"),
        &r["corpus_chrf"],
        0.01,
    );
    let rouge: f64 = r["rouge_l"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    close(
        "the report's ROUGE-L",
        corpus("rouge-l"),
        &serde_json::json!(rouge / 8.0),
        1e-4,
    );
    // Perplexity: the summed per-example log-likelihoods.
    let (n, nll) = examples.iter().fold((0.0, 0.0), |(n, s), e| {
        (
            n + e["nll"][0].as_f64().unwrap(),
            s + e["nll"][1].as_f64().unwrap(),
        )
    });
    let ppl = corpus("perplexity");
    assert!(
        ppl > 1.0 && ((nll / n).exp() - ppl).abs() < 1e-6 * ppl,
        "{ppl}"
    );
}

/// The teacher-forced log-probabilities, decoded in small batches with
/// logits only where needed, equal a log-softmax of the logits of the whole
/// sequence decoded at once.
#[test]
fn forced_log_probabilities_are_the_log_softmax_of_llama_cpp_s_logits() {
    let e = engine();
    let msgs = [Message::new(Role::User, "What is the capital of France?")];
    let prompt = e.tokenize(&e.render_chat(&msgs, true).unwrap());
    let answer = e.tokenize_continuation("The capital of France is Paris, a city on the Seine.");
    let mut sess = e
        .session(SessionOptions {
            ctx_tokens: 256,
            threads: 2,
            batch_tokens: 7,
            ..Default::default()
        })
        .unwrap();
    let lp = sess.forced_logprobs(&prompt, &answer).unwrap();
    assert_eq!(lp.len(), answer.len());
    let mut whole = e
        .session(SessionOptions {
            ctx_tokens: 256,
            threads: 2,
            ..Default::default()
        })
        .unwrap();
    let all: Vec<u32> = prompt.iter().chain(&answer).map(|t| t.0 as u32).collect();
    let logits = whole.logits_all(&all).unwrap();
    for (i, t) in answer.iter().enumerate() {
        let row = &logits[prompt.len() - 1 + i];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let want = row[t.0 as usize] as f64 - lse;
        assert!(
            (lp[i] - want).abs() < 0.02,
            "token {i}: {} vs {want}",
            lp[i]
        );
        assert!(lp[i] <= 0.0);
    }
    // Too long for the context: a clear error, not an abort.
    let long: Vec<_> = std::iter::repeat_n(answer[0], 300).collect();
    assert!(sess.forced_logprobs(&prompt, &long).is_err());
}

#[test]
fn accuracy_holds_answers_to_the_labels() {
    let home = tempfile::tempdir().unwrap();
    let v = eval_json(
        home.path(),
        &[
            "--data",
            &data("sentiment.jsonl"),
            "--metrics",
            "accuracy,contains",
        ],
    );
    assert_eq!(v["labels"], serde_json::json!(["negative", "positive"]));
    let mut right = 0;
    for e in v["examples"].as_array().unwrap() {
        let a = e["label_answer"].as_str().unwrap();
        assert!(a == "negative" || a == "positive", "{e}");
        right += usize::from(a == e["reference"].as_str().unwrap());
    }
    let acc = corpus_score(&v, "accuracy");
    assert!((acc - right as f64 / 6.0).abs() < 1e-9, "{v}");
    // The text metrics score the free answers, as without `accuracy`.
    let free = eval_json(
        home.path(),
        &["--data", &data("sentiment.jsonl"), "--metrics", "contains"],
    );
    let answers = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["answer"].clone())
            .collect()
    };
    assert_eq!(answers(&v), answers(&free));
    assert_eq!(
        corpus_score(&v, "contains"),
        corpus_score(&free, "contains")
    );
}

#[test]
fn bad_eval_data_and_metrics_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let m = model_path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.jsonl");
    // `ferrite eval -m M --data t.jsonl EXTRA...`
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "-m", m, "--data", f.to_str().unwrap()];
        args.extend(extra);
        ferrite(home.path(), &args)
    };
    let good =
        r#"{"messages":[{"role":"user","content":"Hi?"},{"role":"assistant","content":"Hello."}]}"#;
    for (body, want) in [
        (format!("{good}\nnot json\n"), "t.jsonl:2:"),
        (
            r#"{"messages":[{"role":"user","content":"Hi?"}]}"#.to_string(),
            "the last message must be the assistant's reference answer",
        ),
        (
            r#"{"messages":[{"role":"system","content":"x"},{"role":"assistant","content":"y"}]}"#
                .to_string(),
            "must follow a user message",
        ),
        ("\n\n".to_string(), "no examples"),
    ] {
        std::fs::write(&f, &body).unwrap();
        let o = eval(&[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{body}: {err}");
        assert!(err.contains(want), "{body}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    std::fs::write(&f, good).unwrap();
    let o = eval(&["--metrics", "bleu,meteor"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown metric `meteor`"), "{err}");
    let o = ferrite(
        home.path(),
        &["eval", "-m", m, "--data", "/nonexistent.jsonl"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent.jsonl: cannot read"), "{err}");
    // A byte-order mark before line 1 is not an error.
    std::fs::write(&f, format!("\u{feff}{good}\n")).unwrap();
    let o = eval(&["--metrics", "exact", "-n", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A chart that could not be written is refused before any answering.
    let o = eval(&["--chart", "/nonexistent/dir/x.svg"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the folder /nonexistent/dir does not exist"),
        "{err}"
    );
}

/// Render an SVG with rsvg-convert; the PNG's width and height.
pub fn render_svg(svg: &Path) -> (u32, u32) {
    let png = svg.with_extension("png");
    let st = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(svg)
        .status()
        .expect("rsvg-convert (bash .ci/deps installs librsvg2-bin)");
    assert!(st.success(), "rsvg-convert {}", svg.display());
    let b = std::fs::read(&png).unwrap();
    assert_eq!(&b[1..4], b"PNG");
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    assert!(b.len() > 5000, "an empty picture: {} bytes", b.len());
    (be(16), be(20))
}

/// `eval --compare NAME` after training the facts adapter in `home`: on
/// held-out paraphrases the adapter beats the base; the chart renders.
pub fn compare_shows_the_adapter_s_gain(home: &Path) -> serde_json::Value {
    let chart = home.join("cmp.svg");
    let v = eval_json(
        home,
        &[
            "--data",
            &data("facts-test.jsonl"),
            "-n",
            "32",
            "--compare",
            "facts",
            "--chart",
            chart.to_str().unwrap(),
        ],
    );
    let change = &v["change"];
    assert!(change["rouge-l"].as_f64().unwrap() > 0.2, "{change}");
    assert!(change["chrf"].as_f64().unwrap() > 20.0, "{change}");
    assert!(change["perplexity"].as_f64().unwrap() < -5.0, "{change}");
    assert_eq!(render_svg(&chart), ferrite::chart::SIZE);
    v
}

/// Perplexity of the general set's references with adapter `lora`.
pub fn general_perplexity(home: &Path, lora: Option<&str>) -> f64 {
    let g = data("general.jsonl");
    let mut args = vec!["--data", &g, "--metrics", "perplexity"];
    if let Some(l) = lora {
        args.extend(["--lora", l]);
    }
    corpus_score(&eval_json(home, &args), "perplexity")
}
