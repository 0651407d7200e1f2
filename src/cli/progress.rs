//! Progress bars on stderr (indicatif), for the library's `Progress`
//! reports: downloads, unpacking and hashing in bytes, training in steps.
//! indicatif draws nothing when stderr is not a terminal.

use std::sync::Mutex;
use std::time::Duration;

use ferrite::progress::{Progress, Unit};
use indicatif::{ProgressBar, ProgressStyle};

/// One bar at a time, replaced by each `start`.
#[derive(Default)]
pub(crate) struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(b);
        }
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: u64, unit: Unit) {
        let template = match (unit, total) {
            (_, 0) => "{spinner} {msg}",
            (Unit::Bytes, _) => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            (Unit::Steps, _) => "{spinner} {prefix} step {pos}/{len} [{bar:30}] {msg} eta {eta}",
        };
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("template")
                .progress_chars("=> "),
        );
        if unit == Unit::Bytes || total == 0 {
            pb.set_message(what.to_string());
        } else {
            pb.set_prefix(what.to_string());
        }
        if total == 0 {
            pb.enable_steady_tick(Duration::from_millis(120));
        }
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(pb)
        {
            old.finish_and_clear();
        }
    }

    fn position(&self, pos: u64) {
        self.with(|b| b.set_position(pos));
    }

    fn advance(&self, n: u64) {
        self.with(|b| b.inc(n));
    }

    fn status(&self, msg: &str) {
        self.with(|b| b.set_message(msg.to_string()));
    }

    fn note(&self, line: &str) {
        match self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}
