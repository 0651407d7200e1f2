//! Structured output with the real model: answers constrained by a JSON
//! Schema (through llama.cpp's converter) or a GBNF grammar, checked by the
//! `jsonschema` package, from `ask`, the JSON line protocol and the text
//! console; bad schemas and grammars are clear errors before C code runs.

use std::path::Path;

use crate::common::{ferrite, ferrite_with_input, model_path, python_ref};

/// An enum in an object: what "is the light on?" should get (also used by
/// tests/http.rs).
pub(crate) const LIGHT: &str = r#"{"type":"object","properties":{"light":{"enum":["on","off"]}},"required":["light"],"additionalProperties":false}"#;
const CITY: &str = r#"{"type":"object","properties":{"city":{"type":"string","maxLength":40},"country":{"type":"string","maxLength":40},"population_millions":{"type":"number"}},"required":["city","country","population_millions"],"additionalProperties":false}"#;
const LIST: &str =
    r#"{"type":"array","items":{"type":"string","maxLength":30},"minItems":2,"maxItems":4}"#;

/// Every answer (one per line) checked against `schema` by `jsonschema`.
fn validate(schema: &str, answers: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.json");
    std::fs::write(&path, schema).unwrap();
    let lines: String = answers
        .iter()
        .map(|a| format!("{}\n", a.replace('\n', " ")))
        .collect();
    let verdicts = python_ref("jsonschema_check.py", &path, lines.as_bytes(), "jsonschema");
    for (v, a) in verdicts.lines().zip(answers) {
        assert_eq!(v, "ok", "{a}");
    }
    assert_eq!(verdicts.lines().count(), answers.len());
}

fn ask(home: &Path, extra: &[&str], q: &str) -> String {
    let model = model_path().to_str().unwrap().to_string();
    let mut args = vec!["ask", "-m", &model, "-n", "256", "-t", "2"];
    args.extend_from_slice(extra);
    args.push(q);
    let out = ferrite(home, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn answers_fit_their_json_schema_sampled_or_greedy() {
    let home = tempfile::tempdir().unwrap();
    // Without a schema the model answers in prose: the grammar is what
    // makes these parse.
    let free = ask(home.path(), &["--temp", "0"], "Is the light on?");
    assert!(
        serde_json::from_str::<serde_json::Value>(&free).is_err(),
        "{free}"
    );
    for (schema, q) in [
        (LIGHT, "Is the light in the kitchen on?"),
        (CITY, "Tell me about the capital of France."),
        (LIST, "Name some fruits."),
    ] {
        let mut answers = vec![ask(home.path(), &["--temp", "0", "-j", schema], q)];
        for seed in ["1", "2", "3"] {
            answers.push(ask(
                home.path(),
                &["--temp", "0.9", "-s", seed, "-j", schema],
                q,
            ));
        }
        validate(schema, &answers);
    }
    // The same through a file, and a GBNF grammar.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("light.schema.json");
    std::fs::write(&f, LIGHT).unwrap();
    let a = ask(
        home.path(),
        &["--temp", "0", "--json-schema-file", f.to_str().unwrap()],
        "Lights?",
    );
    validate(LIGHT, &[a]);
    let g = dir.path().join("yn.gbnf");
    std::fs::write(&g, "root ::= answer \".\"\nanswer ::= \"yes\" | \"no\"\n").unwrap();
    let a = ask(
        home.path(),
        &[
            "--temp",
            "0.9",
            "-s",
            "4",
            "--grammar-file",
            g.to_str().unwrap(),
        ],
        "Is Paris in France?",
    );
    assert!(a == "yes." || a == "no.", "{a}");
}

#[test]
fn the_json_protocol_and_the_console_take_schemas() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let input = format!(
        "{{\"q\": \"Is the light on?\", \"json_schema\": {LIGHT}}}\n\
         {{\"q\": \"What is the capital of Japan?\"}}\n\
         {{\"q\": \"x\", \"json_schema\": [1]}}\n\
         {{\"q\": \"x\", \"json_schema\": {{\"type\": \"object\"}}, \"grammar\": \"root ::= \\\"a\\\"\"}}\n\
         {{\"q\": \"Yes or no?\", \"grammar\": \"root ::= \\\"yes\\\" | \\\"no\\\"\"}}\n\
         {{\"q\": \"hi\", \"grammar\": \"root ::= [b-a]\"}}\n\
         {{\"q\": \"hi\", \"grammar\": \"root ::= <[999999]>\"}}\n\
         {{\"q\": \"hi\", \"grammar\": \"root ::= undefined\"}}\n\
         {{\"q\": \"What is the capital of Japan?\"}}\n"
    );
    let out = ferrite_with_input(
        home.path(),
        &[
            "serve", "--stdio", "--json", "-m", model, "--temp", "0", "-n", "64",
        ],
        input.as_bytes(),
    );
    assert!(out.status.success());
    let mut answers = vec![String::new()];
    let mut errors = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["token"].as_str() {
            answers.last_mut().unwrap().push_str(t);
        } else if v.get("done").is_some() {
            answers.push(String::new());
        } else if let Some(e) = v["error"].as_str() {
            errors.push(e.to_string());
        }
    }
    answers.pop();
    assert_eq!(answers.len(), 4, "{answers:?}");
    // Grammars no token can follow end in an error, not an abort, and the
    // console answers the next question.
    assert!(answers[3].contains("Tokyo"), "{}", answers[3]);
    validate(LIGHT, &answers[..1]);
    // The schema was for that question only.
    assert!(answers[1].contains("Tokyo"), "{}", answers[1]);
    assert!(answers[2] == "yes" || answers[2] == "no", "{}", answers[2]);
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(errors[0].contains("not a JSON Schema"), "{}", errors[0]);
    assert!(errors[1].contains("give one"), "{}", errors[1]);
    assert!(errors[2].contains("no token fits"), "{}", errors[2]);
    assert!(errors[3].contains("no token fits"), "{}", errors[3]);
    assert!(
        errors[4].contains("grammar parser refused"),
        "{}",
        errors[4]
    );

    // The text console: /set json-schema holds until `off`.
    let input = format!(
        "/set json-schema {LIGHT}\nIs the light on?\nIs it off now?\n/show\n\
         /set json-schema off\nWhat is the capital of Japan?\n/set grammar answer ::= \"x\"\n\
         /set grammar root ::= undefined\n/show\n"
    );
    let out = ferrite_with_input(
        home.path(),
        &["serve", "--stdio", "-m", model, "--temp", "0", "-n", "64"],
        input.as_bytes(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // What follows each prompt: the banner, the setting, two answers, ...
    let chunks: Vec<&str> = text.split("\n> ").map(str::trim).collect();
    assert_eq!(chunks[1], "json-schema = on", "{text}");
    validate(LIGHT, &[chunks[2].to_string(), chunks[3].to_string()]);
    assert!(
        text.contains("json-schema = on") && text.contains("grammar=on"),
        "{text}"
    );
    assert!(
        text.contains("json-schema = off") && text.contains("Tokyo"),
        "{text}"
    );
    assert!(text.contains("no `root ::=` rule"), "{text}");
    // Refused when set, not at the next answer: the setting stays off.
    assert!(text.contains("grammar parser refused"), "{text}");
    let last_show = text.lines().rev().find(|l| l.contains("temp=")).unwrap();
    assert!(!last_show.contains("grammar=on"), "{text}");
}

#[test]
fn bad_schemas_and_grammars_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(300), ")".repeat(300));
    let big = dir.path().join("big.gbnf");
    std::fs::write(&big, format!("root ::= \"{}\"", "a".repeat(300_000))).unwrap();
    for (args, says) in [
        (vec!["-j", "{\"type\":"], "is not JSON"),
        (vec!["-j", "[1, 2]"], "not a JSON Schema"),
        (
            vec!["-j", "{\"$ref\": \"#\"}"],
            "cannot turn this JSON Schema into a grammar",
        ),
        (
            vec!["--grammar", "root ::= missing"],
            "grammar parser refused it",
        ),
        (vec!["--grammar", "answer ::= \"a\""], "no `root ::=` rule"),
        (
            vec!["--grammar", "root ::= [b-a]"],
            "no token fits the grammar",
        ),
        (vec!["--grammar", &deep], "nests groups 300 deep"),
        (
            vec!["--grammar-file", big.to_str().unwrap()],
            "at most 262144",
        ),
        (
            vec!["--grammar-file", "/nonexistent.gbnf"],
            "cannot read /nonexistent.gbnf",
        ),
        (
            vec!["-j", "{}", "--grammar", "root ::= \"a\""],
            "cannot be used with",
        ),
    ] {
        let mut a = vec!["ask", "-m", model, "-n", "4"];
        a.extend_from_slice(&args);
        a.push("hi");
        let out = ferrite(home.path(), &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(
            out.status.code(),
            Some(if says.contains("used with") { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
