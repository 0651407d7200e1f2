//! Thermal awareness: a Pi without a fan reaches its throttling point within
//! minutes of sustained generation, and then the firmware halves the clock
//! for everything. ferrite watches the SoC temperature itself and, above the
//! profile's limit, drops to fewer threads until it has cooled 5 °C below,
//! logging each change, so the board stays responsive instead of cooking.

use std::path::{Path, PathBuf};

/// Hysteresis below the limit before full speed returns.
const COOL_BY_C: f64 = 5.0;

/// The first readable thermal zone's temperature in °C (sysfs holds
/// millidegrees). On a Pi this is the SoC; Jetsons list several zones.
pub fn first_zone_c(root: &Path) -> Option<f64> {
    let mut zones: Vec<PathBuf> = std::fs::read_dir(root.join("sys/class/thermal"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    zones.iter().find_map(|z| read_milli_c(&z.join("temp")))
}

/// The Raspberry Pi firmware's throttling flags (what `vcgencmd
/// get_throttled` prints), from sysfs under `root`: bit 0 under-voltage
/// now, bit 1 ARM frequency capped now, bit 2 throttled now, bit 3 soft
/// temperature limit now; bits 16-19 the same since boot. `None` off a Pi.
pub fn firmware_throttled(root: &Path) -> Option<u32> {
    let raw =
        std::fs::read_to_string(root.join("sys/devices/platform/soc/soc:firmware/get_throttled"))
            .ok()?;
    let raw = raw.trim();
    u32::from_str_radix(raw.trim_start_matches("0x"), 16).ok()
}

fn read_milli_c(p: &Path) -> Option<f64> {
    let milli: f64 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
    Some(milli / 1000.0)
}

/// Decides the thread count from the temperature.
pub struct Governor {
    root: PathBuf,
    zone: Option<PathBuf>,
    limit_c: f64,
    normal: i32,
    throttled_threads: i32,
    throttled: bool,
}

impl Governor {
    pub fn new(board: &super::Board, normal_threads: i32, root: &Path) -> Governor {
        Governor {
            root: root.to_path_buf(),
            zone: board.thermal_zone.clone(),
            limit_c: board.thermal_limit_c,
            normal: normal_threads,
            throttled_threads: (board.throttle_threads as i32).clamp(1, normal_threads.max(1)),
            throttled: false,
        }
    }

    /// The SoC temperature now, if readable.
    pub fn temperature_c(&self) -> Option<f64> {
        match &self.zone {
            Some(z) => {
                let rel = z.strip_prefix("/").unwrap_or(z);
                read_milli_c(&self.root.join(rel))
            }
            None => first_zone_c(&self.root),
        }
    }

    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// Check the temperature; `Some(threads)` when the thread count must
    /// change.
    pub fn check(&mut self) -> Option<i32> {
        let t = self.temperature_c()?;
        if !self.throttled && t >= self.limit_c && self.throttled_threads < self.normal {
            self.throttled = true;
            tracing::warn!(
                temp_c = t,
                limit_c = self.limit_c,
                threads = self.throttled_threads,
                "SoC hot: throttling generation"
            );
            Some(self.throttled_threads)
        } else if self.throttled && t <= self.limit_c - COOL_BY_C {
            self.throttled = false;
            tracing::info!(
                temp_c = t,
                threads = self.normal,
                "SoC cooled: full speed again"
            );
            Some(self.normal)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;

    #[test]
    fn throttles_with_hysteresis_on_a_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let zone = d.path().join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        let set = |c: f64| {
            std::fs::write(zone.join("temp"), format!("{}\n", (c * 1000.0) as i64)).unwrap()
        };
        let board = Board {
            thermal_limit_c: 80.0,
            throttle_threads: 2,
            ..Board::default()
        };
        let mut g = Governor::new(&board, 4, d.path());
        set(60.0);
        assert_eq!(g.check(), None);
        set(81.5);
        assert_eq!(g.temperature_c(), Some(81.5));
        assert_eq!(g.check(), Some(2));
        assert_eq!(g.check(), None);
        set(77.0); // below the limit but not 5 °C below: stay throttled
        assert_eq!(g.check(), None);
        set(74.0);
        assert_eq!(g.check(), Some(4));
        assert!(!g.is_throttled());
        // An explicit zone path is read under the root too.
        let board = Board {
            thermal_zone: Some("/sys/class/thermal/thermal_zone0/temp".into()),
            ..board
        };
        assert_eq!(
            Governor::new(&board, 4, d.path()).temperature_c(),
            Some(74.0)
        );
    }
}
