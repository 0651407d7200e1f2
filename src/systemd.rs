//! systemd's service protocol (`sd_notify`) without a C library: when run
//! under `Type=notify`, tell systemd READY once the model is loaded and the
//! port is open, and feed its watchdog (`WatchdogSec=`) while the loop is
//! alive. A hung loop stops the pings and systemd restarts the service.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Send one notification; a no-op when not run by systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        send_abstract(&sock, abstract_name, state)
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
            .map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The loop's proof of life. `beat()` is cheap; call it on every turn of
/// the loop and every generated token.
#[derive(Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
}

/// Start feeding systemd's watchdog if `WATCHDOG_USEC` asks for it: a ping
/// every half period, only while the heartbeat is fresher than the period.
pub fn watchdog() -> Heartbeat {
    let hb = Heartbeat(Arc::new(AtomicU64::new(now_ms())));
    let period_us: Option<u64> = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse().ok());
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    if let (Some(us), true) = (period_us, pid_ok) {
        let period = Duration::from_micros(us);
        let beat = hb.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(period / 2);
                let age = now_ms().saturating_sub(beat.0.load(Ordering::Relaxed));
                if u128::from(age) < period.as_millis() {
                    notify("WATCHDOG=1");
                } else {
                    tracing::error!(
                        age_ms = age,
                        "main loop unresponsive: not feeding the watchdog"
                    );
                }
            })
            .expect("spawn watchdog");
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    hb
}
