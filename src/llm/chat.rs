//! Chat messages and their rendering into a prompt with the model's own chat
//! template.
//!
//! A GGUF carries its chat template as Jinja source (`tokenizer.chat_template`,
//! copied from Hugging Face's `tokenizer_config.json`). It is rendered here
//! by a real Jinja engine (minijinja, with Python's string methods from
//! minijinja-contrib) set up the way Hugging Face's `apply_chat_template`
//! sets up jinja2: `trim_blocks` and `lstrip_blocks`, `raise_exception`,
//! `strftime_now`, and `bos_token`/`eos_token` as the tokenizer's texts. So
//! the prompt is the one the model was trained on, default system prompt
//! included (llama.cpp's own `llama_chat_apply_template` matches known
//! templates by pattern and approximates them: for SmolLM2 it drops the
//! template's default system turn, 14 prompt tokens instead of 35).
//!
//! Fallbacks, in order: a template minijinja cannot render goes to llama.cpp's
//! approximation; a model without any template (a base model such as
//! gemma-3-270m) is completed as plain text, its messages joined by blank
//! lines, never wrapped in a chat format it was not trained on.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use serde::{Deserialize, Serialize};

use super::LlmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// How a model's prompts are rendered.
pub(crate) enum Template {
    /// The GGUF's own Jinja template.
    Jinja(JinjaTemplate),
    /// llama.cpp's approximation of a template minijinja could not render.
    Builtin(LlamaChatTemplate),
    /// No template at all: plain text.
    Plain,
}

/// Which of the three a model got, for logs and `models info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    Jinja,
    LlamaCppBuiltin,
    Plain,
}

impl Template {
    pub(crate) fn for_model(model: &LlamaModel) -> Template {
        let Ok(tmpl) = model.chat_template(None) else {
            tracing::info!("the model has no chat template: prompts are completed as plain text");
            return Template::Plain;
        };
        let vocab = model.vocab();
        let text_of = |t| {
            vocab
                .text(t)
                .and_then(|c| c.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        if let Ok(source) = tmpl.to_str() {
            let jinja = JinjaTemplate {
                source: source.to_string(),
                bos: text_of(vocab.bos()),
                eos: text_of(vocab.eos()),
                strip_bos: vocab.should_add_bos(),
            };
            let probe = [Message::new(Role::User, "hi")];
            match jinja.render(&probe, true) {
                Ok(_) => return Template::Jinja(jinja),
                Err(e) => {
                    tracing::warn!(error = %e, "chat template not renderable by minijinja: using llama.cpp's approximation")
                }
            }
        }
        // llama.cpp recognises templates by pattern; probe it once.
        let probe = [LlamaChatMessage::new("user".into(), "hi".into()).expect("no NUL")];
        if model.apply_chat_template(&tmpl, &probe, true).is_ok() {
            return Template::Builtin(tmpl);
        }
        tracing::warn!(
            "the model's chat template is not recognised by llama.cpp either: plain text"
        );
        Template::Plain
    }

    pub(crate) fn kind(&self) -> TemplateKind {
        match self {
            Template::Jinja(_) => TemplateKind::Jinja,
            Template::Builtin(_) => TemplateKind::LlamaCppBuiltin,
            Template::Plain => TemplateKind::Plain,
        }
    }

    /// Render messages, ending with the opening of the assistant's turn.
    pub(crate) fn render(
        &self,
        model: &LlamaModel,
        messages: &[Message],
    ) -> Result<String, LlmError> {
        self.render_with(model, messages, true)
    }

    /// Render messages; `open_assistant` appends the opening of an assistant
    /// turn (as for a prompt), otherwise the text ends after the last message
    /// (as for a finished conversation in training data).
    pub(crate) fn render_with(
        &self,
        model: &LlamaModel,
        messages: &[Message],
        open_assistant: bool,
    ) -> Result<String, LlmError> {
        match self {
            Template::Jinja(j) => j.render(messages, open_assistant),
            Template::Plain => Ok(plain(messages, open_assistant)),
            Template::Builtin(tmpl) => {
                let msgs = messages
                    .iter()
                    .map(|m| {
                        LlamaChatMessage::new(
                            m.role.as_str().to_string(),
                            m.content.replace('\0', ""),
                        )
                        .map_err(|e| LlmError::Template(e.into()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model
                    .apply_chat_template(tmpl, &msgs, open_assistant)
                    .map_err(|e| LlmError::Template(e.into()))
            }
        }
    }
}

/// A base model's "chat": the messages' texts, a blank line between them.
/// One user message is exactly its text, so `ask` continues it as written.
fn plain(messages: &[Message], open_assistant: bool) -> String {
    let mut s = messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    if open_assistant && messages.len() > 1 {
        s.push_str("\n\n");
    }
    s
}

/// A Jinja chat template with the tokenizer texts it may refer to.
pub(crate) struct JinjaTemplate {
    source: String,
    bos: String,
    eos: String,
    /// The tokenizer adds BOS itself: a BOS text the template writes first is
    /// dropped, or the prompt would start with two (llama.cpp does the same).
    strip_bos: bool,
}

impl JinjaTemplate {
    fn render(&self, messages: &[Message], open_assistant: bool) -> Result<String, LlmError> {
        let out =
            match render_template(&self.source, messages, open_assistant, &self.bos, &self.eos) {
                Ok(s) => s,
                // Templates that refuse a system turn (Gemma 2, Mistral v1):
                // fold it into the first user turn, as chat front ends do.
                Err(e) if messages.first().is_some_and(|m| m.role == Role::System) => {
                    let merged = merge_system(messages);
                    render_template(&self.source, &merged, open_assistant, &self.bos, &self.eos)
                        .map_err(|_| e)?
                }
                Err(e) => return Err(e),
            };
        Ok(match out.strip_prefix(&self.bos) {
            Some(rest) if self.strip_bos && !self.bos.is_empty() => rest.to_string(),
            _ => out,
        })
    }
}

fn merge_system(messages: &[Message]) -> Vec<Message> {
    let mut rest = messages[1..].to_vec();
    match rest.first_mut() {
        Some(first) if first.role == Role::User => {
            first.content = format!("{}\n\n{}", messages[0].content, first.content);
        }
        _ => rest.insert(0, Message::new(Role::User, messages[0].content.clone())),
    }
    rest
}

/// Render a Jinja chat template as Hugging Face's `apply_chat_template`
/// does (transformers `chat_template_utils.py`: a sandboxed jinja2
/// environment with `trim_blocks=True, lstrip_blocks=True`, the functions
/// `raise_exception(msg)` and `strftime_now(format)`, and the variables
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token`).
///
/// Errors: `LlmError::Template` with minijinja's message for a template that
/// does not parse, raises, or uses what minijinja lacks.
pub fn render_template(
    source: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, LlmError> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| {
        chrono::Local::now().format(&fmt).to_string()
    });
    let err = |e: minijinja::Error| LlmError::Template(e.into());
    let tmpl = env.template_from_str(source).map_err(err)?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML_DEFAULT_SYSTEM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_a_default_system_turn_and_the_generation_prompt() {
        let m = [Message::new(Role::User, "Hi")];
        assert_eq!(
            render_template(CHATML_DEFAULT_SYSTEM, &m, true, "", "").unwrap(),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception() {
        let t = "{% if messages[0]['content'].startswith('x') %}{{ raise_exception('no x') }}{% endif %}{{ messages[0]['content'].strip() }}";
        assert_eq!(
            render_template(t, &[Message::new(Role::User, " y ")], false, "", "").unwrap(),
            "y"
        );
        let e = render_template(t, &[Message::new(Role::User, "xy")], false, "", "").unwrap_err();
        let e = crate::report(&e);
        assert!(e.contains("no x"), "{e}");
    }

    #[test]
    fn a_refused_system_turn_is_folded_into_the_first_user_turn() {
        let j = JinjaTemplate {
            source: "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}".into(),
            bos: "<s>".into(),
            eos: "</s>".into(),
            strip_bos: true,
        };
        let m = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
        ];
        assert_eq!(j.render(&m, true).unwrap(), "[user:Be brief.\n\nHi]");
    }

    #[test]
    fn a_leading_bos_is_left_to_the_tokenizer() {
        let j = JinjaTemplate {
            source: "{{ bos_token }}{{ messages[0]['content'] }}".into(),
            bos: "<bos>".into(),
            eos: String::new(),
            strip_bos: true,
        };
        assert_eq!(
            j.render(&[Message::new(Role::User, "x")], true).unwrap(),
            "x"
        );
        let j = JinjaTemplate {
            strip_bos: false,
            ..j
        };
        assert_eq!(
            j.render(&[Message::new(Role::User, "x")], true).unwrap(),
            "<bos>x"
        );
    }

    #[test]
    fn plain_text_for_base_models() {
        let one = [Message::new(Role::User, "The capital of France is")];
        assert_eq!(plain(&one, true), "The capital of France is");
        let two = [
            Message::new(Role::System, "Facts."),
            Message::new(Role::User, "Paris is"),
        ];
        assert_eq!(plain(&two, true), "Facts.\n\nParis is\n\n");
    }
}
