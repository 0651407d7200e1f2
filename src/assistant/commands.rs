//! The console's own commands (`/help`, `/reset`, `/stats`, `/set`, `/system`,
//! `/model`, `/quit`). These are the only things a console line can make
//! ferrite do besides answering: nothing is ever passed to a shell.

use crate::llm::{GenParams, Grammar};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Reset,
    Stats,
    /// Show the sampling settings.
    Show,
    Set(Setting),
    /// Set (Some) or clear (None) the system prompt.
    System(Option<String>),
    Model(String),
    /// List the models that can be switched to.
    Models,
    /// `/lora list`.
    LoraList,
    /// `/lora use NAME [SCALE]`.
    LoraUse(String, f32),
    /// `/lora off`.
    LoraOff,
    /// Stop the answer in progress (the JSON protocol's Ctrl-C).
    Cancel,
    Quit,
}

/// One sampling knob and its new value.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Temp(f32),
    TopK(i32),
    TopP(f32),
    MinP(f32),
    RepeatPenalty(f32),
    NPredict(Option<usize>),
    Seed(u32),
    /// Structured output (`json-schema` or `grammar`, by `key`); `None`:
    /// free text again.
    Grammar {
        key: &'static str,
        grammar: Option<Grammar>,
    },
}

pub const HELP: &str = "\
commands:
  /help               this text
  /reset              forget the conversation
  /stats              speed, time to first token, context use, memory, temperature
  /set KEY VALUE      temp, top-k, top-p, min-p, repeat-penalty, n-predict (-1 = no limit), seed
  /set json-schema J  answers are JSON that fits the JSON Schema J (one line; `off` ends it)
  /set grammar G      answers fit the one-rule GBNF grammar G (`root ::= ...`; `off` ends it)
  /show               the current sampling settings
  /system TEXT        set the system prompt (/system alone clears it)
  /models             models that /model can switch to
  /model NAME         switch to another pulled model (starts a new conversation)
  /lora list          LoRA adapters in the store (and which is in use)
  /lora use NAME [S]  apply an adapter at scale S (default 1); the model stays loaded
  /lora off           back to the base model
  /quit               end this session
anything else is a question; Ctrl-C cancels an answer or clears the line";

impl Command {
    /// `None` if the line is not a command (does not start with `/`).
    pub fn parse(line: &str) -> Option<Result<Command, String>> {
        let line = line.trim();
        let rest = line.strip_prefix('/')?;
        let (name, arg) = match rest.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (rest, ""),
        };
        let no_arg = |c: Command| {
            if arg.is_empty() {
                Ok(c)
            } else {
                Err(format!("/{name} takes no argument"))
            }
        };
        Some(match name {
            "help" | "?" => no_arg(Command::Help),
            "reset" => no_arg(Command::Reset),
            "stats" => no_arg(Command::Stats),
            "show" => no_arg(Command::Show),
            "quit" | "exit" => no_arg(Command::Quit),
            "models" => no_arg(Command::Models),
            "cancel" => no_arg(Command::Cancel),
            "system" => Ok(Command::System((!arg.is_empty()).then(|| arg.to_string()))),
            "model" if !arg.is_empty() => Ok(Command::Model(arg.to_string())),
            "model" => Err("usage: /model NAME (see /models)".into()),
            "set" => Setting::parse(arg).map(Command::Set),
            "lora" => parse_lora(arg),
            _ => Err(format!("unknown command /{name}; /help lists them")),
        })
    }
}

fn parse_lora(arg: &str) -> Result<Command, String> {
    let mut it = arg.split_whitespace();
    match (it.next(), it.next(), it.next(), it.next()) {
        (None | Some("list"), None, None, None) => Ok(Command::LoraList),
        (Some("off"), None, None, None) => Ok(Command::LoraOff),
        (Some("use"), Some(name), scale, None) => {
            let scale = match scale {
                None => 1.0,
                Some(s) => s
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite() && (-4.0..=4.0).contains(v))
                    .ok_or("the scale must be a number from -4 to 4")?,
            };
            Ok(Command::LoraUse(name.to_string(), scale))
        }
        _ => Err("usage: /lora list | /lora use NAME [SCALE] | /lora off".into()),
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Temp(v) => write!(f, "temp = {v}"),
            Setting::TopK(v) => write!(f, "top-k = {v}"),
            Setting::TopP(v) => write!(f, "top-p = {v}"),
            Setting::MinP(v) => write!(f, "min-p = {v}"),
            Setting::RepeatPenalty(v) => write!(f, "repeat-penalty = {v}"),
            Setting::NPredict(None) => write!(f, "n-predict = -1 (no limit)"),
            Setting::NPredict(Some(n)) => write!(f, "n-predict = {n}"),
            Setting::Seed(0xFFFF_FFFF) => write!(f, "seed = -1 (random)"),
            Setting::Seed(v) => write!(f, "seed = {v}"),
            Setting::Grammar { key, grammar } => {
                write!(
                    f,
                    "{key} = {}",
                    if grammar.is_some() { "on" } else { "off" }
                )
            }
        }
    }
}

impl Setting {
    fn parse(arg: &str) -> Result<Setting, String> {
        let (key, value) = arg
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .ok_or("usage: /set KEY VALUE")?;
        let f = |lo: f32, hi: f32| -> Result<f32, String> {
            match value.parse::<f32>() {
                Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
                _ => Err(format!("{key} must be a number from {lo} to {hi}")),
            }
        };
        Ok(match key.replace('_', "-").as_str() {
            "temp" | "temperature" => Setting::Temp(f(0.0, 5.0)?),
            "top-k" => Setting::TopK(value.parse().ok().filter(|&k| k >= 0).ok_or("top-k must be a whole number ≥ 0")?),
            "top-p" => Setting::TopP(f(0.0, 1.0)?),
            "min-p" => Setting::MinP(f(0.0, 1.0)?),
            "repeat-penalty" => Setting::RepeatPenalty(f(0.01, 10.0)?),
            "n-predict" | "n" => Setting::NPredict(match value.parse::<i64>() {
                Ok(-1) => None,
                Ok(n) if n > 0 => Some(n as usize),
                _ => return Err("n-predict must be a positive whole number or -1".into()),
            }),
            // -1 (or `random`): a fresh seed for each answer, as on the CLI.
            "seed" => Setting::Seed(match value {
                "-1" | "random" => 0xFFFF_FFFF,
                v => v.parse().map_err(|_| "seed must be a whole number from 0, or -1 for a random one")?,
            }),
            "json-schema" => Setting::Grammar {
                key: "json-schema",
                grammar: (value != "off")
                    .then(|| Grammar::from_json_schema(value, "the schema"))
                    .transpose()
                    .map_err(|e| crate::report(&e))?,
            },
            "grammar" => Setting::Grammar {
                key: "grammar",
                grammar: (value != "off")
                    .then(|| Grammar::from_gbnf(value, "the grammar"))
                    .transpose()
                    .map_err(|e| crate::report(&e))?,
            },
            _ => return Err(format!("unknown setting `{key}`; settable: temp, top-k, top-p, min-p, repeat-penalty, n-predict, seed, json-schema, grammar")),
        })
    }

    pub fn apply(&self, p: &mut GenParams) {
        match self {
            Setting::Temp(v) => p.temperature = *v,
            Setting::TopK(v) => p.top_k = *v,
            Setting::TopP(v) => p.top_p = *v,
            Setting::MinP(v) => p.min_p = *v,
            Setting::RepeatPenalty(v) => p.repeat_penalty = *v,
            Setting::NPredict(v) => p.n_predict = *v,
            Setting::Seed(v) => p.seed = *v,
            Setting::Grammar { grammar, .. } => p.grammar = grammar.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("hello"), None);
        assert_eq!(Command::parse("/reset"), Some(Ok(Command::Reset)));
        assert_eq!(
            Command::parse(" /set temp 0.7 "),
            Some(Ok(Command::Set(Setting::Temp(0.7))))
        );
        assert_eq!(
            Command::parse("/set n-predict -1"),
            Some(Ok(Command::Set(Setting::NPredict(None))))
        );
        assert_eq!(
            Command::parse("/system be brief"),
            Some(Ok(Command::System(Some("be brief".into()))))
        );
        assert_eq!(Command::parse("/system"), Some(Ok(Command::System(None))));
        assert!(matches!(Command::parse("/set temp hot"), Some(Err(_))));
        // As the CLI: -n -5 and a negative seed other than -1 are refused;
        // seed -1 goes back to a random seed.
        assert!(matches!(Command::parse("/set n-predict -5"), Some(Err(_))));
        assert!(matches!(Command::parse("/set seed -2"), Some(Err(_))));
        assert_eq!(
            Command::parse("/set seed -1"),
            Some(Ok(Command::Set(Setting::Seed(0xFFFF_FFFF))))
        );
        assert!(matches!(Command::parse("/rm -rf /"), Some(Err(_))));
        assert_eq!(Command::parse("/lora"), Some(Ok(Command::LoraList)));
        assert_eq!(
            Command::parse("/lora use pirate 0.5"),
            Some(Ok(Command::LoraUse("pirate".into(), 0.5)))
        );
        assert_eq!(Command::parse("/lora off"), Some(Ok(Command::LoraOff)));
        assert!(matches!(Command::parse("/lora use"), Some(Err(_))));
        assert!(matches!(Command::parse("/lora use x nan"), Some(Err(_))));
        assert!(matches!(Command::parse("/reset now"), Some(Err(_))));
    }
}
