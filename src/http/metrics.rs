//! `GET /metrics`: counters in Prometheus's text exposition format
//! (prometheus.io/docs/instrumenting/exposition_formats), for a board's
//! monitoring to scrape: requests, answers finished and cancelled, tokens
//! in and out, generation time, the queue, and the process's memory.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters shared by the handlers and the worker.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Chat requests received (before any check).
    pub requests: AtomicU64,
    /// Answers the model finished (any finish but a cancel).
    pub answered: AtomicU64,
    /// Answers stopped because their client went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Time spent generating, in milliseconds.
    pub generation_ms: AtomicU64,
    /// Requests waiting for the model.
    pub waiting: AtomicUsize,
    /// Requests accepted and not yet finished (waiting, and the one the
    /// model is answering).
    pub in_flight: AtomicUsize,
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self, model: &str) -> String {
        let mut s = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP ferrite_{name} {help}\n# TYPE ferrite_{name} {kind}"
            );
            let _ = writeln!(s, "ferrite_{name}{{model=\"{model}\"}} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        put(
            "requests_total",
            "counter",
            "Chat requests received.",
            get(&self.requests).to_string(),
        );
        put(
            "answers_total",
            "counter",
            "Answers finished.",
            get(&self.answered).to_string(),
        );
        put(
            "cancelled_total",
            "counter",
            "Answers stopped because the client went away.",
            get(&self.cancelled).to_string(),
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of finished answers.",
            get(&self.prompt_tokens).to_string(),
        );
        put(
            "generated_tokens_total",
            "counter",
            "Tokens generated.",
            get(&self.generated_tokens).to_string(),
        );
        put(
            "generation_seconds_total",
            "counter",
            "Time spent generating.",
            format!("{:.3}", get(&self.generation_ms) as f64 / 1000.0),
        );
        put(
            "queue_depth",
            "gauge",
            "Requests waiting for the model.",
            self.waiting.load(Ordering::Relaxed).to_string(),
        );
        if let Some(rss) = crate::assistant::rss_bytes() {
            put(
                "resident_memory_bytes",
                "gauge",
                "Resident set size of the process.",
                rss.to_string(),
            );
        }
        s
    }
}
