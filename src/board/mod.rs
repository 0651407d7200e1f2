//! Board profiles: the per-device settings (target, threads, context, GPU
//! layers, memory budget, serial console, GPIO pins, audio device, thermal
//! limits, default model, store location) read from `boards/<name>.toml`.
//!
//! The shipped profiles are compiled into the binary, so `--board NAME` works
//! on a flashed device without the repository; `--board PATH` reads a file,
//! and `ferrite board detect` names the profile of the machine it runs on.
//! Unknown keys are an error, so a typo in a profile is caught, not ignored.

mod detect;
mod memory;
mod thermal;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use detect::detect;
pub(crate) use memory::proc_kib_field;
pub use memory::{
    available_bytes, check_fits, check_fits_beside, check_fits_pooled, estimate,
    kv_bytes_per_token, memory_limit, KvType, MemoryEstimate,
};
pub use thermal::{firmware_throttled, first_zone_c, Governor};

/// Serial parity (the console's UART settings live in the profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// No flow control.
    None,
    /// XON/XOFF in band.
    Software,
    /// RTS/CTS lines.
    Hardware,
}

/// Threads to use when none are configured: every online core, as llama.cpp.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map_or(4, |n| n.get() as i32)
}

/// Profiles shipped in `boards/`, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("host", include_str!("../../boards/host.toml")),
    ("rpi4", include_str!("../../boards/rpi4.toml")),
    ("rpi5", include_str!("../../boards/rpi5.toml")),
    ("rpi-zero2w", include_str!("../../boards/rpi-zero2w.toml")),
    ("rpi-armv7", include_str!("../../boards/rpi-armv7.toml")),
    (
        "jetson-orin-nano",
        include_str!("../../boards/jetson-orin-nano.toml"),
    ),
    (
        "jetson-agx-orin",
        include_str!("../../boards/jetson-agx-orin.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("unknown board `{name}` (known: {known}); or pass a path to a .toml profile")]
    Unknown { name: String, known: String },
    #[error("board profile {origin}: {msg}")]
    Parse { origin: String, msg: String },
    #[error("board profile {}: cannot read it{}", path.display(), if path.starts_with("/etc/ferrite") { " (the .deb installs it; by hand: sudo install -D -m 644 dist/ferrite.toml /etc/ferrite/ferrite.toml)" } else { "" })]
    Profile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not enough memory for {what}: needs {need_mib} MiB (model {model_mib} + KV cache {kv_mib} + compute {compute_mib}) but {limit_mib} MiB is allowed ({why}); {hint}")]
    OutOfMemory {
        what: String,
        need_mib: u64,
        model_mib: u64,
        kv_mib: u64,
        compute_mib: u64,
        limit_mib: u64,
        why: String,
        hint: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// The Rust target triple the board runs.
    pub target: String,
    /// `GGML_CPU_ARM_ARCH` the board's build should use (ARM only).
    pub arm_arch: Option<String>,
    /// `CMAKE_CUDA_ARCHITECTURES` for `--features cuda` builds (`87` on the
    /// Orins; boards/ggml.sh reads it), unset on boards without an NVIDIA GPU.
    pub cuda_arch: Option<String>,
    /// CPU threads; 0 = all online cores.
    pub threads: u32,
    pub ctx_tokens: u32,
    /// The KV cache's element type, K and V (`-ctk`/`-ctv` override it):
    /// q8_0 holds a context in about half the memory of f16.
    pub kv_type: KvType,
    pub gpu_layers: u32,
    /// Other boards serving layers (`ferrite rpc-server`), `HOST:PORT` each:
    /// `--rpc`'s default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rpc_servers: Vec<String>,
    /// MiB for model + KV cache + compute buffers; 0 = only what is free.
    pub memory_budget_mb: u64,
    pub default_model: Option<String>,
    pub store_dir: Option<PathBuf>,
    /// The console's serial port for `ferrite serve` without `--port`.
    pub serial_port: Option<String>,
    /// Where `ferrite serve` serves the HTTP API without `--http` (beside
    /// the serial console when there is one), e.g. `127.0.0.1:8080`.
    pub http_listen: Option<std::net::SocketAddr>,
    pub baud: u32,
    pub parity: Parity,
    pub flow_control: FlowControl,
    /// Push-to-talk input and status LED output (BCM GPIO numbers).
    pub ptt_pin: Option<u8>,
    pub led_pin: Option<u8>,
    /// ALSA capture device.
    pub audio_device: String,
    /// ALSA playback device for spoken answers.
    pub audio_out_device: String,
    /// SoC temperature file in millidegrees; `None` = first thermal zone.
    pub thermal_zone: Option<PathBuf>,
    pub thermal_limit_c: f64,
    /// Threads while above the thermal limit.
    pub throttle_threads: u32,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            name: "host".into(),
            description: String::new(),
            target: String::new(),
            arm_arch: None,
            cuda_arch: None,
            threads: 0,
            ctx_tokens: 2048,
            kv_type: KvType::F16,
            gpu_layers: 0,
            rpc_servers: Vec::new(),
            memory_budget_mb: 0,
            default_model: None,
            store_dir: None,
            serial_port: None,
            http_listen: None,
            baud: 115_200,
            parity: Parity::None,
            flow_control: FlowControl::None,
            ptt_pin: None,
            led_pin: None,
            audio_device: "default".into(),
            audio_out_device: "default".into(),
            thermal_zone: None,
            thermal_limit_c: 85.0,
            throttle_threads: 1,
        }
    }
}

impl Board {
    /// A shipped profile by name, or a profile file by path.
    pub fn load(spec: &str) -> Result<Board, BoardError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Self::parse(text, &format!("boards/{spec}.toml"));
        }
        let p = Path::new(spec);
        // A path (not a bare name) is read as a file, and a missing one says
        // so rather than calling the path an unknown board name.
        if p.is_file() || spec.contains('/') || spec.ends_with(".toml") {
            let text = std::fs::read_to_string(p).map_err(|source| BoardError::Profile {
                path: p.to_path_buf(),
                source,
            })?;
            return Self::parse(&text, &p.display().to_string());
        }
        Err(BoardError::Unknown {
            name: spec.into(),
            known: Self::names().join(", "),
        })
    }

    pub fn parse(text: &str, origin: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| BoardError::Parse {
            origin: origin.into(),
            msg: e.to_string(),
        })?;
        for s in &board.rpc_servers {
            s.parse::<crate::rpc::Endpoint>()
                .map_err(|e| BoardError::Parse {
                    origin: origin.into(),
                    msg: format!("rpc_servers: {e}"),
                })?;
        }
        Ok(board)
    }

    /// `rpc_servers`, parsed (checked when the profile was read).
    pub fn rpc_endpoints(&self) -> Vec<crate::rpc::Endpoint> {
        self.rpc_servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    pub fn names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// Threads to use: the profile's, or every online core.
    pub fn threads(&self) -> i32 {
        if self.threads == 0 {
            default_threads()
        } else {
            self.threads as i32
        }
    }

    /// The profile as TOML, for `ferrite board show`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("profile serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_profile_path_is_not_an_unknown_board() {
        let e = Board::load("/etc/ferrite/ferrite.toml").unwrap_err();
        assert!(matches!(e, BoardError::Profile { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("install -D -m 644 dist/ferrite.toml"),
            "{e}"
        );
        let e = Board::load("no-such-board").unwrap_err();
        assert!(matches!(e, BoardError::Unknown { .. }), "{e:?}");
        let e = Board::load("my-board.toml").unwrap_err();
        assert!(matches!(e, BoardError::Profile { .. }), "{e:?}");
    }

    #[test]
    fn shipped_profiles_parse() {
        for n in Board::names() {
            let b = Board::load(n).unwrap();
            assert_eq!(b.name, n);
            assert!(!b.target.is_empty(), "{n}: no target");
            // What `board show` prints reads back the same.
            let again = Board::parse(&b.to_toml(), n).unwrap();
            assert_eq!(again.to_toml(), b.to_toml());
        }
    }

    #[test]
    fn packaged_profile_parses() {
        let b = Board::parse(include_str!("../../dist/ferrite.toml"), "dist/ferrite.toml").unwrap();
        assert_eq!(b.name, "ferrite");
    }

    #[test]
    fn rpc_servers_are_checked_when_read() {
        let b = Board::parse("rpc_servers = [\"10.0.0.2:50052\"]", "t").unwrap();
        assert_eq!(b.rpc_endpoints()[0].to_string(), "10.0.0.2:50052");
        let e = Board::parse("rpc_servers = [\"10.0.0.2\"]", "t").unwrap_err();
        assert!(e.to_string().contains("rpc_servers"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Board::parse("thread = 2", "t").is_err());
    }
}
