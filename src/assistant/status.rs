//! Readings for `/stats`: the process's resident memory and the SoC
//! temperature, from `/proc` and `/sys`, when the system exposes them.

use std::path::Path;

/// Resident set size of this process in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The first readable thermal zone's temperature in °C (millidegrees in
/// sysfs). On a Pi this is the SoC; Jetsons list several zones.
pub fn soc_temp_c(root: &Path) -> Option<f64> {
    let mut zones: Vec<_> = std::fs::read_dir(root.join("sys/class/thermal"))
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
    zones.iter().find_map(|z| {
        let milli: f64 = std::fs::read_to_string(z.join("temp"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(milli / 1000.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let z = d.path().join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("temp"), "48250\n").unwrap();
        assert_eq!(soc_temp_c(d.path()), Some(48.25));
        assert!(rss_bytes().unwrap() > 0);
    }
}
