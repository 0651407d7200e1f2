//! The two console renderings of the assistant's events: the serial text
//! console (what a person at a terminal reads) and the JSON line protocol
//! (what a microcontroller or script parses). Each event's form is written
//! once here, as llama.cpp's server gives each output format its own
//! `to_json`; neither rendering holds a conversation rule.
//!
//! The JSON lines are the protocol's wire format, kept byte for byte (a
//! recorded session is replayed in the tests): one object per event, keys in
//! sorted order, as `serde_json`'s own map writes them.

use serde_json::json;

use super::event::{Event, StatsReport};
use crate::llm::Finish;

/// The JSON line for `event` (without its newline).
pub fn json(event: &Event) -> String {
    let v = match event {
        Event::Ready {
            version,
            model,
            ctx,
        } => json!({ "ready": true, "version": version, "model": model, "ctx": ctx }),
        Event::Heard {
            text,
            audio_s,
            stt_s,
        } => json!({ "heard": text, "audio_s": audio_s, "stt_s": stt_s }),
        Event::Token { text } => json!({ "token": text }),
        Event::Done { finish, stats } => json!({ "done": true, "finish": finish, "stats": stats }),
        Event::Info { command, text } => json!({ "ok": command, "info": text }),
        Event::Stats(s) => json!({ "stats": stats_json(s) }),
        Event::Error { message } => json!({ "error": message }),
    };
    v.to_string()
}

fn stats_json(s: &StatsReport) -> serde_json::Value {
    json!({
        "last": s.last,
        "ctx_tokens": s.ctx_tokens,
        "turns": s.turns,
        "rss_bytes": s.rss_bytes,
        "soc_temp_c": s.soc_temp_c,
        "throttled": s.throttled,
        "threads": s.threads,
        "adapter": s.adapter.as_ref().map(|(name, scale)| json!({"name": name, "scale": scale})),
        "output_dropped_bytes": s.output_dropped_bytes.unwrap_or(0),
    })
}

/// The text for `event` on a terminal: everything but the prompt, which the
/// console writes when it waits for the next line.
pub fn text(event: &Event) -> String {
    match event {
        Event::Ready {
            version,
            model,
            ctx,
        } => format!("ferrite {version} model={model} ctx={ctx}\n"),
        Event::Heard { text, .. } => format!("you said: {text}\n"),
        Event::Token { text } => text.clone(),
        Event::Done {
            finish: Finish::Cancelled,
            ..
        } => " [cancelled]\n".into(),
        Event::Done { .. } => "\n".into(),
        Event::Info { text, .. } => format!("{text}\n"),
        Event::Stats(s) => format!("{}\n", stats_text(s)),
        Event::Error { message } => format!("error: {message}\n"),
    }
}

/// `/stats` as a person reads it.
pub fn stats_text(s: &StatsReport) -> String {
    let mut t = String::new();
    match &s.last {
        Some(st) => t.push_str(&format!(
            "last answer: {} tok at {:.1} tok/s, ttft {:.0} ms, prompt {} tok ({} cached) at {:.1} tok/s\n",
            st.gen_tokens,
            st.tokens_per_s(),
            st.ttft_ms,
            st.prompt_tokens,
            st.cached_tokens,
            st.prompt_tokens_per_s()
        )),
        None => t.push_str("last answer: none yet\n"),
    }
    if let Some((name, scale)) = &s.adapter {
        t.push_str(&format!("adapter: {name} at scale {scale}\n"));
    }
    if let Some(d) = &s.draft {
        let (drafted, accepted) = s
            .last
            .as_ref()
            .map_or((0, 0), |st| (st.draft_tokens, st.draft_accepted));
        t.push_str(&format!(
            "speculative: {d}, last answer {accepted}/{drafted} draft tokens accepted\n"
        ));
    }
    let used = s.last.as_ref().map_or(0, |st| st.ctx_used);
    t.push_str(&format!(
        "context: {used}/{} tokens, {} turns\n",
        s.ctx_tokens, s.turns
    ));
    t.push_str(&match s.rss_bytes {
        Some(b) => format!("memory: rss {:.1} MiB\n", b as f64 / (1024.0 * 1024.0)),
        None => "memory: not readable\n".into(),
    });
    t.push_str(&match s.soc_temp_c {
        Some(c) => format!(
            "soc: {c:.1} °C, {} threads{}",
            s.threads,
            if s.throttled { " (throttled)" } else { "" }
        ),
        None => format!("soc: temperature not readable, {} threads", s.threads),
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_the_wire_format() {
        assert_eq!(
            json(&Event::Token { text: "Hi".into() }),
            r#"{"token":"Hi"}"#
        );
        assert_eq!(
            json(&Event::info("reset", "(conversation forgotten)")),
            r#"{"info":"(conversation forgotten)","ok":"reset"}"#
        );
        assert_eq!(
            json(&Event::Ready {
                version: "0.1.0",
                model: "m".into(),
                ctx: 2048
            }),
            r#"{"ctx":2048,"model":"m","ready":true,"version":"0.1.0"}"#
        );
        assert_eq!(json(&Event::error("x")), r#"{"error":"x"}"#);
    }

    #[test]
    fn text_lines() {
        assert_eq!(text(&Event::error("bad")), "error: bad\n");
        assert_eq!(
            text(&Event::Heard {
                text: "hello".into(),
                audio_s: 1.0,
                stt_s: 0.1
            }),
            "you said: hello\n"
        );
    }
}
