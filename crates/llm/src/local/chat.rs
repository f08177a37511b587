//! Chat templates (ChatML, Llama 3, Gemma) and prompt tokens.

use crate::llm::{Message, Role};
use llmrec_core::{Error, Result};

use super::*;

pub(super) enum ChatTemplate {
    ChatMl {
        default_system: Option<String>,
    },
    Llama3,
    /// Gemma's turns: no system role (its text opens the first user turn), the
    /// assistant is `model`, and the prompt starts with `<bos>`.
    Gemma,
}

impl LocalLlm {
    /// The prompt text for `messages` with the model's chat template, ending
    /// with the assistant's turn header when `add_generation_prompt`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        match &self.template {
            ChatTemplate::ChatMl { default_system } => {
                let has_system = messages.first().is_some_and(|m| m.role == Role::System);
                if let (Some(sys), false) = (default_system, has_system) {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role.as_str(),
                        m.content
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Gemma => {
                s.push_str("<bos>");
                let mut system: Option<&str> = None;
                for m in messages {
                    let role = match m.role {
                        Role::System => {
                            system = Some(m.content.trim());
                            continue;
                        }
                        Role::User => "user",
                        Role::Assistant => "model",
                    };
                    s.push_str("<start_of_turn>");
                    s.push_str(role);
                    s.push('\n');
                    if let Some(sys) = system.take() {
                        s.push_str(sys);
                        s.push_str("\n\n");
                    }
                    s.push_str(m.content.trim());
                    s.push_str("<end_of_turn>\n");
                }
                if add_generation_prompt {
                    s.push_str("<start_of_turn>model\n");
                }
            }
            ChatTemplate::Llama3 => {
                s.push_str("<|begin_of_text|>");
                for m in messages {
                    s.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role.as_str(),
                        m.content.trim()
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        s
    }

    /// A training example from a chat whose last message is the assistant's answer:
    /// the prompt tokens (every earlier message, with the assistant's turn header, as
    /// generation sees them), then the answer's tokens and the end-of-turn token.
    /// Returns the tokens and where the answer starts.
    pub fn answer_tokens(&self, messages: &[Message]) -> Result<(Vec<u32>, usize)> {
        let Some((last, prompt)) = messages.split_last() else {
            return Err(Error::Invalid("an example needs messages".into()));
        };
        if last.role != Role::Assistant || prompt.is_empty() {
            return Err(Error::Invalid(
                "an example's last message must be the assistant's answer, after a prompt".into(),
            ));
        }
        let mut ids = self.prompt_ids(prompt)?;
        let start = ids.len();
        ids.extend(self.encode(&last.content)?);
        ids.push(self.end_of_turn);
        Ok((ids, start))
    }

    pub(super) fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let ids = self.encode(&self.render_chat(messages, true))?;
        if ids.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        Ok(ids)
    }
}
