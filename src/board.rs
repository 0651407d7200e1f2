//! Board profiles: the per-device settings (threads, context, GPU layers,
//! default model, store location) read from `boards/<name>.toml`.
//!
//! The shipped profiles are compiled into the binary, so `--board NAME` works
//! on a flashed device without the repository; `--board PATH` reads a file.
//! Unknown keys are an error, so a typo in a profile is caught, not ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::console::serial::{FlowOpt, ParityOpt};

/// Profiles shipped in `boards/`, by name.
const BUILTIN: &[(&str, &str)] = &[("host", include_str!("../boards/host.toml"))];

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("unknown board `{name}` (known: {known}); or pass a path to a .toml profile")]
    Unknown { name: String, known: String },
    #[error("board profile {origin}: {msg}")]
    Parse { origin: String, msg: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// CPU threads; 0 = all online cores.
    pub threads: u32,
    pub ctx_tokens: u32,
    pub gpu_layers: u32,
    pub default_model: Option<String>,
    pub store_dir: Option<PathBuf>,
    /// The console's serial port for `ferrite serve` without `--port`.
    pub serial_port: Option<String>,
    pub baud: u32,
    pub parity: ParityOpt,
    pub flow_control: FlowOpt,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            name: "host".into(),
            description: String::new(),
            threads: 0,
            ctx_tokens: 2048,
            gpu_layers: 0,
            default_model: None,
            store_dir: None,
            serial_port: None,
            baud: 115_200,
            parity: ParityOpt::None,
            flow_control: FlowOpt::None,
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
        if p.is_file() {
            let text = std::fs::read_to_string(p).map_err(|e| BoardError::Parse {
                origin: p.display().to_string(),
                msg: e.to_string(),
            })?;
            return Self::parse(&text, &p.display().to_string());
        }
        Err(BoardError::Unknown {
            name: spec.into(),
            known: Self::names().join(", "),
        })
    }

    pub fn parse(text: &str, origin: &str) -> Result<Board, BoardError> {
        toml::from_str(text).map_err(|e| BoardError::Parse {
            origin: origin.into(),
            msg: e.to_string(),
        })
    }

    pub fn names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// Threads to use: the profile's, or every online core.
    pub fn threads(&self) -> i32 {
        if self.threads == 0 {
            crate::llm::default_threads()
        } else {
            self.threads as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse() {
        for n in Board::names() {
            Board::load(n).unwrap();
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Board::parse("thread = 2", "t").is_err());
    }
}
