//! Which profile fits the machine we run on: the device tree's model string
//! (`/proc/device-tree/model`, NUL-terminated) names Raspberry Pis and
//! Jetsons; `/etc/nv_tegra_release` marks a Jetson whose model string is
//! unhelpful. Everything else is `host`. A 32-bit build (32-bit Raspberry Pi
//! OS) runs the `rpi-armv7` profile on any Pi, since the 64-bit profiles'
//! kernels and budgets do not apply to it. Reads from a root so tests can use
//! a fake tree.

use std::path::Path;

/// The profile name and the model string it was chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub profile: &'static str,
    pub model: Option<String>,
}

pub fn detect(root: &Path) -> Detected {
    detect_for(root, cfg!(target_pointer_width = "32"))
}

/// `detect` for a binary that is (`is_32bit`) or is not a 32-bit build.
fn detect_for(root: &Path, is_32bit: bool) -> Detected {
    let model = std::fs::read(root.join("proc/device-tree/model"))
        .ok()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty());
    let tegra = root.join("etc/nv_tegra_release").exists();
    let m = model.as_deref().unwrap_or("").to_ascii_lowercase();
    let profile = if is_32bit && m.contains("raspberry pi") {
        "rpi-armv7"
    } else if m.contains("raspberry pi 5") {
        "rpi5"
    } else if m.contains("raspberry pi 4") || m.contains("compute module 4") {
        "rpi4"
    } else if m.contains("raspberry pi zero 2") {
        "rpi-zero2w"
    } else if m.contains("agx orin") {
        "jetson-agx-orin"
    } else if tegra || m.contains("orin nano") || m.contains("orin nx") {
        // Any other Tegra: the smallest Orin profile is the safe default.
        "jetson-orin-nano"
    } else {
        "host"
    };
    Detected { profile, model }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(model: Option<&[u8]>, tegra: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(m) = model {
            std::fs::create_dir_all(d.path().join("proc/device-tree")).unwrap();
            std::fs::write(d.path().join("proc/device-tree/model"), m).unwrap();
        }
        if tegra {
            std::fs::create_dir_all(d.path().join("etc")).unwrap();
            std::fs::write(d.path().join("etc/nv_tegra_release"), "# R36 (release)\n").unwrap();
        }
        d
    }

    #[test]
    fn names_the_boards() {
        for (model, tegra, want) in [
            (
                Some(&b"Raspberry Pi 5 Model B Rev 1.0\0"[..]),
                false,
                "rpi5",
            ),
            (Some(b"Raspberry Pi 4 Model B Rev 1.4\0"), false, "rpi4"),
            (
                Some(b"Raspberry Pi Zero 2 W Rev 1.0\0"),
                false,
                "rpi-zero2w",
            ),
            (
                Some(b"NVIDIA Jetson Orin Nano Developer Kit\0"),
                true,
                "jetson-orin-nano",
            ),
            (Some(b"Jetson AGX Orin\0"), true, "jetson-agx-orin"),
            (None, true, "jetson-orin-nano"),
            (None, false, "host"),
        ] {
            let d = tree(model, tegra);
            assert_eq!(detect_for(d.path(), false).profile, want, "{model:?}");
        }
    }

    #[test]
    fn a_32bit_build_on_any_pi_is_rpi_armv7() {
        for model in [
            &b"Raspberry Pi 3 Model B Plus Rev 1.3\0"[..],
            b"Raspberry Pi 4 Model B Rev 1.4\0",
            b"Raspberry Pi Zero 2 W Rev 1.0\0",
        ] {
            let d = tree(Some(model), false);
            assert_eq!(detect_for(d.path(), true).profile, "rpi-armv7");
        }
        // Not a Pi: still the host profile.
        let d = tree(None, false);
        assert_eq!(detect_for(d.path(), true).profile, "host");
    }
}
