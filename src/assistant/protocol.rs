//! The JSON line protocol's requests: one JSON object per line, either a
//! question (`{"q": "..."}`) or a console command without its slash
//! (`{"cmd": "set temp 0.5"}`). Parsing is a pure function of the line, so
//! it is tested and fuzzed on its own; the replies' wire format lives with
//! the loop that sends them.

use super::commands::Command;

/// What one JSON line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Question(String),
    Command(Command),
}

/// Parse one line of the JSON protocol. The error is the message sent back
/// as `{"error": ...}`.
pub fn parse_json_line(line: &str) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    if let Some(q) = v.get("q").and_then(|q| q.as_str()) {
        return Ok(Request::Question(q.to_string()));
    }
    if let Some(c) = v.get("cmd").and_then(|c| c.as_str()) {
        let c = format!("/{}", c.trim_start_matches('/'));
        return match Command::parse(&c) {
            Some(r) => r.map(Request::Command),
            None => Err("expected {\"q\": \"question\"} or {\"cmd\": \"command\"}".into()),
        };
    }
    Err("expected {\"q\": \"question\"} or {\"cmd\": \"command\"}".into())
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
        assert!(parse_json_line("nope")
            .unwrap_err()
            .starts_with("not a JSON object"));
        assert!(parse_json_line(r#"{"q": 3}"#)
            .unwrap_err()
            .starts_with("expected"));
        assert!(parse_json_line(r#"{"cmd": "rm -rf /"}"#)
            .unwrap_err()
            .contains("unknown command"));
    }
}
