//! Chat templates rendered by ferrite (minijinja) against the reference:
//! Python's jinja2 set up as Hugging Face's `apply_chat_template` sets it up
//! (a sandboxed environment with `trim_blocks`, `lstrip_blocks` and
//! `raise_exception`), on SmolLM2's template from its GGUF, Qwen2.5's (from
//! the Qwen2.5-Coder-0.5B-Instruct GGUF: ChatML with a default system
//! prompt) and Gemma 3's (`<start_of_turn>`, the system prompt folded into the
//! first user turn, `| trim`, `raise_exception` on roles out of order).

use std::io::Write;
use std::process::{Command, Stdio};

use ferrite::llm::{render_template, Message, Role};

use crate::common::{engine, model_path};

/// jinja2's rendering, as transformers does it.
fn reference(source: &str, messages: &[Message], bos: &str, eos: &str) -> String {
    const PY: &str = r#"
import json, sys
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
req = json.load(sys.stdin)
def raise_exception(message):
    raise TemplateError(message)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
out = env.from_string(req["source"]).render(
    messages=req["messages"], add_generation_prompt=True,
    bos_token=req["bos"], eos_token=req["eos"])
sys.stdout.write(out)
"#;
    let mut py = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let req = serde_json::json!({"source": source, "messages": messages, "bos": bos, "eos": eos});
    py.stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jinja2 (python3 -m pip install jinja2; bash .ci/deps does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn conversations() -> Vec<Vec<Message>> {
    let u = |s: &str| Message::new(Role::User, s);
    let a = |s: &str| Message::new(Role::Assistant, s);
    let sys = |s: &str| Message::new(Role::System, s);
    vec![
        vec![u("What is your name?")],
        vec![sys("Answer briefly."), u("What is the capital of Japan?")],
        vec![
            u("Hi"),
            a("Hello! How can I help?"),
            u("  Tell me a joke.  "),
        ],
        vec![
            sys("You are a pirate."),
            u("Where is the treasure?"),
            a("Arr, buried deep."),
            u("Dig it up, with \"quotes\" and {braces} and a\nnewline."),
        ],
    ]
}

#[test]
fn templates_render_as_hugging_face_renders_them() {
    let g = ferrite::gguf::GgufFile::open(model_path()).unwrap();
    let smollm2 = g.get_str("tokenizer.chat_template").unwrap().to_string();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/templates/");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}{f}")).unwrap();
    for (name, source, bos, eos) in [
        ("smollm2", smollm2, "<|im_start|>", "<|im_end|>"),
        ("qwen2.5", read("qwen2.5.jinja"), "", "<|im_end|>"),
        ("gemma3", read("gemma3.jinja"), "<bos>", "<eos>"),
    ] {
        for msgs in conversations() {
            let ours = render_template(&source, &msgs, true, bos, eos)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::eqnice!(reference(&source, &msgs, bos, eos), ours);
        }
    }
    // Roles out of order: the template's own error, not a crash.
    let gemma = read("gemma3.jinja");
    let bad = [Message::new(Role::Assistant, "first")];
    let e = render_template(&gemma, &bad, true, "<bos>", "<eos>").unwrap_err();
    let e = ferrite::report(&e);
    assert!(e.contains("must alternate"), "{e}");
}

/// The issue's measurement: SmolLM2's template adds its default system turn,
/// so "What is your name?" is a 35-token prompt (llama.cpp's approximation
/// made it 14), and the prompt is exactly the template's rendering.
#[test]
fn smollm2_prompts_are_its_own_template() {
    let e = engine();
    assert_eq!(e.template_kind(), ferrite::llm::TemplateKind::Jinja);
    let m = [Message::new(Role::User, "What is your name?")];
    let prompt = e.render_chat(&m, true).unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{prompt}"
    );
    assert_eq!(e.tokenize(&prompt).len(), 35);
}
