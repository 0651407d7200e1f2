//! systemd's service protocol through the `sd-notify` crate: READY once the
//! assistant is serving, and the watchdog (`WatchdogSec=`) fed only while the
//! assistant's loop proves it is alive. A hung loop stops the pings and
//! systemd restarts the service. Outside systemd every call is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The assistant's `Service` under systemd.
pub(crate) struct Systemd {
    /// Milliseconds since `start` at the loop's last heartbeat.
    last_beat_ms: Arc<AtomicU64>,
    start: Instant,
}

impl Systemd {
    /// Start feeding the watchdog if systemd asked for one (`WATCHDOG_USEC`
    /// for this process): a ping every half period while the heartbeat is
    /// fresher than the period.
    pub(crate) fn start() -> Systemd {
        let s = Systemd {
            last_beat_ms: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
        };
        if let Some(period) = sd_notify::watchdog_enabled() {
            let beat = s.last_beat_ms.clone();
            let start = s.start;
            let spawned = std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || loop {
                    std::thread::sleep(period / 2);
                    let now = start.elapsed().as_millis() as u64;
                    let age =
                        Duration::from_millis(now.saturating_sub(beat.load(Ordering::Relaxed)));
                    if age < period {
                        notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!(
                            age_ms = age.as_millis() as u64,
                            "main loop unresponsive: not feeding the watchdog"
                        );
                    }
                });
            match spawned {
                Ok(_) => tracing::info!(
                    period_ms = period.as_millis() as u64,
                    "systemd watchdog enabled"
                ),
                Err(e) => tracing::error!(error = %e, "cannot start the watchdog thread"),
            }
        }
        s
    }
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

impl ferrite::assistant::Service for Systemd {
    fn ready(&self) {
        notify(&[NotifyState::Ready]);
    }

    fn heartbeat(&self) {
        self.last_beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
