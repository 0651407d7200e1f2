//! The pull path against a real HTTP server on loopback: a good file, a file
//! with the wrong hash, and a download cut off half-way then resumed with a
//! `Range` request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

use ferrite::models::{Manifest, ModelsError, Store};
use sha2::{Digest, Sha256};

/// Serves `body` at any path; the first `cut_first` requests are cut off
/// after `cut_at` bytes. Records each request's `Range` header.
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, cut_first: usize, cut_at: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate().take(16) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
            }
            seen.lock().unwrap().push(range.clone());
            let start: usize = range
                .as_deref()
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    start,
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let end = if n < cut_first {
                cut_at.max(start)
            } else {
                body.len()
            };
            let _ = stream.write_all(&body[start..end]);
            let _ = stream.flush();
            // Dropping the stream closes it: a cut-off download.
        }
    });
    Server { url, ranges }
}

fn body() -> Vec<u8> {
    let mut s = 7u64;
    (0..300_000)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn manifest(url: &str, sha: &str, size: usize) -> Manifest {
    Manifest::parse(
        &format!(
            r#"
            [[model]]
            name = "web"
            kind = "gguf"
            file = "web.gguf"
            sha256 = "{sha}"
            size = {size}
            license = "test"
            [[model.source]]
            kind = "url"
            url = "{url}"
            "#
        ),
        "test",
    )
    .unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn good_file_is_pulled_and_verified() {
    let b = body();
    let srv = serve(b.clone(), 0, 0);
    let m = manifest(&srv.url, &sha(&b), b.len());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().to_path_buf());
    let p = store.pull(m.get("web").unwrap()).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b);
    store.verify("web", &m).unwrap();
    assert_eq!(store.path("web").unwrap(), p);
    // Pulling again is a no-op: no second request.
    store.pull(m.get("web").unwrap()).unwrap();
    assert_eq!(srv.ranges.lock().unwrap().len(), 1);
    // Damage on disk is caught by verify.
    let mut bad = b.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    assert!(matches!(
        store.verify("web", &m),
        Err(ModelsError::HashMismatch { .. })
    ));
    // As verify's message says, pulling again mends it: a second request.
    store.pull(m.get("web").unwrap()).unwrap();
    assert_eq!(srv.ranges.lock().unwrap().len(), 2);
    assert_eq!(std::fs::read(&p).unwrap(), b);
    store.verify("web", &m).unwrap();
}

#[test]
fn wrong_hash_is_refused_and_nothing_is_kept() {
    let b = body();
    let srv = serve(b.clone(), 0, 0);
    let m = manifest(&srv.url, &"0".repeat(64), b.len());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().to_path_buf());
    let e = store.pull(m.get("web").unwrap()).unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");
    assert!(matches!(
        store.path("web"),
        Err(ModelsError::NotPulled { .. })
    ));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("models/web"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn interrupted_download_resumes_with_range() {
    let b = body();
    let cut = 123_457;
    let srv = serve(b.clone(), 1, cut);
    let m = manifest(&srv.url, &sha(&b), b.len());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().to_path_buf());
    let e = store.pull(m.get("web").unwrap()).unwrap_err().to_string();
    assert!(e.contains("resume"), "{e}");
    let part = dir.path().join("models/web/web.gguf.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);
    let p = store.pull(m.get("web").unwrap()).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b);
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges, vec![None, Some(format!("{cut}-"))]);
    assert!(!part.exists());
}

#[test]
fn unreachable_source_reports_the_url() {
    // A port nothing listens on (bound, then released).
    let port = crate::common::free_port();
    let url = format!("http://127.0.0.1:{port}/x.gguf");
    let m = manifest(&url, &"a".repeat(64), 10);
    let dir = tempfile::tempdir().unwrap();
    let e = Store::new(dir.path().to_path_buf())
        .pull(m.get("web").unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url), "{e}");
}

/// Serves `body` to every connection at once, each in its own thread and
/// slowly (20 pieces, 30 ms apart), so that two downloads overlap.
fn serve_slowly(body: Vec<u8>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let body = Arc::new(body);
    thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let (body, seen) = (body.clone(), seen.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                seen.lock().unwrap().push(None);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                for piece in body.chunks(body.len().div_ceil(20)) {
                    let _ = stream.write_all(piece);
                    let _ = stream.flush();
                    thread::sleep(std::time::Duration::from_millis(30));
                }
            });
        }
    });
    Server { url, ranges }
}

#[test]
fn two_pulls_of_one_model_take_turns() {
    // Two `models pull` at once on one store (the service at first boot and
    // an admin): both succeed, with one download between them.
    let b = body();
    let srv = serve_slowly(b.clone());
    let m = manifest(&srv.url, &sha(&b), b.len());
    let dir = tempfile::tempdir().unwrap();
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let (root, entry) = (dir.path().to_path_buf(), m.get("web").unwrap().clone());
            thread::spawn(move || Store::new(root).pull(&entry))
        })
        .collect();
    let paths: Vec<_> = pulls
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(paths[0], paths[1]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), b);
    assert_eq!(srv.ranges.lock().unwrap().len(), 1, "downloaded twice");
}
