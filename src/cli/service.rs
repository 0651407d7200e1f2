//! systemd's service protocol through the `sd-notify` crate, and SIGTERM
//! through `signal-hook`:
//!
//! - `STATUS=` lines say what start-up is doing ("loading model ...",
//!   "waiting for /dev/serial0 ...", "serving on ...").
//! - Until READY, `EXTEND_TIMEOUT_USEC` every 10 s keeps systemd's start
//!   timeout (90 s by default) from killing a first boot that pulls a model
//!   for minutes.
//! - READY=1 once the model is loaded and the loop runs, whether or not the
//!   serial port is there yet.
//! - The watchdog (`WatchdogSec=`) is fed only while the assistant's loop
//!   proves it is alive; a hung loop stops the pings and systemd restarts
//!   the service.
//! - SIGTERM asks the loop to stop: the answer in progress is cancelled,
//!   `STOPPING=1` is sent, the LED is turned off and ferrite exits 0.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) the notifications are no-ops; SIGTERM
//! still ends the loop cleanly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often start-up extends systemd's start timeout, and by how much.
const EXTEND_EVERY: Duration = Duration::from_secs(10);
const EXTEND_BY: Duration = Duration::from_secs(30);

/// The assistant's `Service` under systemd.
pub(crate) struct Systemd {
    /// Milliseconds since `start` at the loop's last heartbeat.
    last_beat_ms: Arc<AtomicU64>,
    start: Instant,
    /// READY has been sent (ends the start-timeout extensions).
    ready: Arc<AtomicBool>,
    /// SIGTERM arrived.
    term: Arc<AtomicBool>,
    /// STOPPING=1 has been sent.
    stopping_sent: AtomicBool,
}

impl Systemd {
    /// Start feeding the watchdog if systemd asked for one (`WATCHDOG_USEC`
    /// for this process): a ping every half period while the heartbeat is
    /// fresher than the period.
    pub(crate) fn start() -> Systemd {
        let s = Systemd {
            last_beat_ms: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            ready: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
            stopping_sent: AtomicBool::new(false),
        };
        s.handle_sigterm();
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            s.extend_start_timeout();
        }
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

impl Systemd {
    /// SIGTERM before READY ends the process at once (start-up holds nothing
    /// that an atomic write does not already protect); after READY it asks
    /// the loop to stop (`stopping`).
    fn handle_sigterm(&self) {
        let (term, ready) = (self.term.clone(), self.ready.clone());
        let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]);
        let spawned = signals.and_then(|mut signals| {
            std::thread::Builder::new()
                .name("sigterm".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        term.store(true, Ordering::Relaxed);
                        if !ready.load(Ordering::Relaxed) {
                            tracing::info!("SIGTERM during start-up: exiting");
                            notify(&[NotifyState::Stopping]);
                            std::process::exit(143);
                        }
                    }
                })
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot handle SIGTERM: it will end ferrite abruptly");
        }
    }

    /// Until READY, ask systemd for more start-up time every `EXTEND_EVERY`.
    fn extend_start_timeout(&self) {
        let ready = self.ready.clone();
        let usec = EXTEND_BY.as_micros() as u32;
        notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
        let spawned = std::thread::Builder::new()
            .name("start-timeout".into())
            .spawn(move || {
                while !ready.load(Ordering::Relaxed) {
                    std::thread::sleep(EXTEND_EVERY);
                    if !ready.load(Ordering::Relaxed) {
                        notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the start-timeout thread");
        }
    }
}

/// Send `state` to systemd; a failure is logged once, not at every ping.
fn notify(state: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(state) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET): further failures are not logged");
        }
    }
}

impl ferrite::assistant::Service for Systemd {
    fn ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        notify(&[NotifyState::Ready]);
    }

    fn heartbeat(&self) {
        self.last_beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn status(&self, line: &str) {
        notify(&[NotifyState::Status(line)]);
    }

    fn stopping(&self) -> bool {
        let term = self.term.load(Ordering::Relaxed);
        if term && !self.stopping_sent.swap(true, Ordering::Relaxed) {
            tracing::info!("SIGTERM: stopping");
            notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
        term
    }
}
