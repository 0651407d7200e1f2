//! Requests to the assistant, as the consoles receive them: a typed line
//! (a slash command, or else a question) or a JSON line (`{"q": "..."}` or
//! `{"cmd": "set temp 0.5"}`, a command without its slash). Parsing is a
//! pure function of the line, so it is tested and fuzzed on its own.

use super::commands::Command;
use crate::llm::Grammar;

/// What one line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Question(String),
    /// A question whose answer must fit a grammar (the JSON protocol's
    /// `json_schema` or `grammar` beside `q`), for this answer only.
    Structured(String, Box<Grammar>),
    Command(Command),
}

const EXPECTED: &str = "expected {\"q\": \"question\"} or {\"cmd\": \"command\"}";

impl Request {
    /// A typed line: a command when it starts with `/`, else a question.
    pub fn from_text(line: &str) -> Result<Request, String> {
        match Command::parse(line) {
            Some(cmd) => cmd.map(Request::Command),
            None => Ok(Request::Question(line.to_string())),
        }
    }
}

/// Parse one line of the JSON protocol. The error is the message sent back
/// as `{"error": ...}`. A request with a field besides the one it uses is
/// refused, not half read; a question may carry `json_schema` (a JSON
/// Schema object) or `grammar` (GBNF text) for its answer.
pub fn parse_json_line(line: &str) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let (key, req) = if let Some(q) = v.get("q").and_then(|q| q.as_str()) {
        // As on the text console: nothing to answer, or bytes no one typed.
        if q.trim().is_empty() {
            return Err("`q` is empty: nothing to answer".into());
        }
        if q.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err("`q` contains control characters: ignored".into());
        }
        let req = match (v.get("json_schema"), v.get("grammar")) {
            (None, None) => Request::Question(q.to_string()),
            (Some(_), Some(_)) => {
                return Err("`json_schema` and `grammar` together: give one".into())
            }
            (Some(schema), None) => Request::Structured(
                q.to_string(),
                Box::new(
                    Grammar::from_schema_value(schema, "`json_schema`")
                        .map_err(|e| crate::report(&e))?,
                ),
            ),
            (None, Some(g)) => {
                let g = g.as_str().ok_or("`grammar` must be a string of GBNF")?;
                Request::Structured(
                    q.to_string(),
                    Box::new(Grammar::from_gbnf(g, "`grammar`").map_err(|e| crate::report(&e))?),
                )
            }
        };
        ("q", req)
    } else if let Some(c) = v.get("cmd").and_then(|c| c.as_str()) {
        if c.trim().trim_start_matches('/').is_empty() {
            return Err("`cmd` is empty: `help` lists the commands".into());
        }
        let c = format!("/{}", c.trim_start_matches('/'));
        match Command::parse(&c) {
            Some(r) => ("cmd", Request::Command(r?)),
            None => return Err(EXPECTED.into()),
        }
    } else {
        return Err(EXPECTED.into());
    };
    if let Some(other) = v.as_object().and_then(|o| {
        o.keys().find(|k| {
            k.as_str() != key && !(key == "q" && matches!(k.as_str(), "json_schema" | "grammar"))
        })
    }) {
        return Err(format!(
            "unknown field `{other}` in the request: {EXPECTED}"
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_commands_and_errors() {
        assert_eq!(
            parse_json_line(r#"{"q": "hi"}"#),
            Ok(Request::Question("hi".into()))
        );
        assert_eq!(
            parse_json_line(r#"{"cmd": "reset"}"#),
            Ok(Request::Command(Command::Reset))
        );
        assert_eq!(
            parse_json_line(r#"{"cmd": "/stats"}"#),
            Ok(Request::Command(Command::Stats))
        );
        assert_eq!(
            parse_json_line(r#"{"cmd": "cancel"}"#),
            Ok(Request::Command(Command::Cancel))
        );
        assert!(parse_json_line("nope")
            .unwrap_err()
            .starts_with("not a JSON object"));
        assert!(parse_json_line(r#"{"q": 3}"#)
            .unwrap_err()
            .starts_with("expected"));
        assert!(parse_json_line(r#"{"cmd": "rm -rf /"}"#)
            .unwrap_err()
            .contains("unknown command"));
        let e = parse_json_line(r#"{"q": "hi", "temperature": 2}"#).unwrap_err();
        assert!(e.starts_with("unknown field `temperature`"), "{e}");
        // As the text console: empty, and control characters, refused.
        assert!(parse_json_line(r#"{"q": " "}"#)
            .unwrap_err()
            .contains("empty"));
        assert!(parse_json_line(r#"{"q": "a\u0000b"}"#)
            .unwrap_err()
            .contains("control characters"));
        assert_eq!(
            parse_json_line(r#"{"q": "line one\nline two"}"#),
            Ok(Request::Question("line one\nline two".into()))
        );
        assert!(parse_json_line(r#"{"cmd": ""}"#)
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn typed_lines() {
        assert_eq!(
            Request::from_text("hello"),
            Ok(Request::Question("hello".into()))
        );
        assert_eq!(
            Request::from_text("/reset"),
            Ok(Request::Command(Command::Reset))
        );
        assert!(Request::from_text("/nope").is_err());
    }
}
