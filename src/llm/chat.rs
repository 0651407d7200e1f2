//! Chat messages and their rendering into a prompt with the model's own chat
//! template (read from the GGUF), falling back to ChatML when the model has
//! none or llama.cpp does not recognise it.

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

/// The template a model is rendered with.
pub(crate) struct Template {
    tmpl: LlamaChatTemplate,
    pub(crate) is_fallback: bool,
}

impl Template {
    pub(crate) fn for_model(model: &LlamaModel) -> Template {
        if let Ok(tmpl) = model.chat_template(None) {
            // llama.cpp recognises templates by pattern; probe it once.
            let probe = [LlamaChatMessage::new("user".into(), "hi".into()).expect("no NUL")];
            if model.apply_chat_template(&tmpl, &probe, true).is_ok() {
                return Template {
                    tmpl,
                    is_fallback: false,
                };
            }
            tracing::warn!("model's chat template is not recognised by llama.cpp: using ChatML");
        }
        Template {
            tmpl: LlamaChatTemplate::new("chatml").expect("no NUL"),
            is_fallback: true,
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
        let msgs = messages
            .iter()
            .map(|m| {
                LlamaChatMessage::new(m.role.as_str().to_string(), m.content.replace('\0', ""))
                    .map_err(|e| LlmError::Template(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        model
            .apply_chat_template(&self.tmpl, &msgs, open_assistant)
            .map_err(|e| LlmError::Template(e.to_string()))
    }
}
