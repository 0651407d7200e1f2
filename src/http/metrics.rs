//! `GET /metrics`: counters in Prometheus's text exposition format
//! (prometheus.io/docs/instrumenting/exposition_formats), for a board's
//! monitoring to scrape: requests, answers finished and cancelled, tokens
//! in and out, generation time (tokens per second is the rate of one over
//! the other), draft tokens proposed and kept, the queue and the answers running, the process's memory, and
//! the board's SoC temperature and throttling where it exposes them.

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
    /// Speculative decoding: draft tokens proposed, and kept.
    pub draft_tokens: AtomicU64,
    pub draft_accepted: AtomicU64,
    /// Requests waiting for the model.
    pub waiting: AtomicUsize,
    /// Requests accepted and not yet finished (waiting, and the one the
    /// model is answering).
    pub in_flight: AtomicUsize,
}

impl Metrics {
    /// The exposition text, with the board's sensors under `/`.
    pub fn render(&self, model: &str) -> String {
        self.render_with(model, std::path::Path::new("/"))
    }

    /// The exposition text, the sensors read under `root` (sysfs's
    /// thermal zones; the Pi firmware's throttling flags).
    pub fn render_with(&self, model: &str, root: &std::path::Path) -> String {
        let mut s = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP ferrite_{name} {help}\n# TYPE ferrite_{name} {kind}"
            );
            let _ = writeln!(s, "ferrite_{name}{{model=\"{model}\"}} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let counters = [
            (
                "requests_total",
                "Chat requests received.",
                get(&self.requests),
            ),
            ("answers_total", "Answers finished.", get(&self.answered)),
            (
                "cancelled_total",
                "Answers stopped because the client went away.",
                get(&self.cancelled),
            ),
            (
                "prompt_tokens_total",
                "Prompt tokens of finished answers.",
                get(&self.prompt_tokens),
            ),
            (
                "generated_tokens_total",
                "Tokens generated.",
                get(&self.generated_tokens),
            ),
            (
                "generation_seconds_total",
                "Time spent generating.",
                format!(
                    "{:.3}",
                    self.generation_ms.load(Ordering::Relaxed) as f64 / 1000.0
                ),
            ),
            (
                "draft_tokens_total",
                "Draft tokens proposed (speculative decoding).",
                get(&self.draft_tokens),
            ),
            (
                "draft_accepted_total",
                "Draft tokens the model kept.",
                get(&self.draft_accepted),
            ),
        ];
        for (name, help, value) in counters {
            put(name, "counter", help, value);
        }
        put(
            "queue_depth",
            "gauge",
            "Requests waiting for the model.",
            self.waiting.load(Ordering::Relaxed).to_string(),
        );
        put(
            "running",
            "gauge",
            "Answers being generated now.",
            self.in_flight
                .load(Ordering::Relaxed)
                .saturating_sub(self.waiting.load(Ordering::Relaxed))
                .to_string(),
        );
        sensors(&mut put, root);
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

/// The board's SoC temperature and the Pi firmware's throttling flags,
/// where `root`'s sysfs has them.
fn sensors(put: &mut dyn FnMut(&str, &str, &str, String), root: &std::path::Path) {
    if let Some(t) = crate::board::first_zone_c(root) {
        put(
            "soc_temperature_celsius",
            "gauge",
            "The SoC's temperature (the first thermal zone).",
            format!("{t:.1}"),
        );
    }
    if let Some(flags) = crate::board::firmware_throttled(root) {
        put(
            "throttled",
            "gauge",
            "1 while the Pi firmware throttles the CPU (get_throttled bits 1-3).",
            u8::from(flags & 0b1110 != 0).to_string(),
        );
        put(
            "under_voltage",
            "gauge",
            "1 while the Pi's supply is under-voltage (get_throttled bit 0).",
            (flags & 1).to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensors_are_exposed_where_the_board_has_them() {
        let root = tempfile::tempdir().unwrap();
        let m = Metrics::default();
        m.in_flight.store(3, Ordering::Relaxed);
        m.waiting.store(1, Ordering::Relaxed);
        let bare = m.render_with("x", root.path());
        assert!(bare.contains("ferrite_running{model=\"x\"} 2"), "{bare}");
        assert!(!bare.contains("temperature") && !bare.contains("throttled"));
        let zone = root.path().join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "61234\n").unwrap();
        let fw = root.path().join("sys/devices/platform/soc/soc:firmware");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("get_throttled"), "0x50005\n").unwrap();
        let pi = m.render_with("x", root.path());
        assert!(
            pi.contains("ferrite_soc_temperature_celsius{model=\"x\"} 61.2"),
            "{pi}"
        );
        assert!(pi.contains("ferrite_throttled{model=\"x\"} 1"), "{pi}");
        assert!(pi.contains("ferrite_under_voltage{model=\"x\"} 1"), "{pi}");
    }
}
