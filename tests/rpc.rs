//! A model split across boards with ggml's RPC backend, on loopback: each
//! `ferrite rpc-server` process stands in for a helper board. The split
//! model answers the goldens; a server killed mid-answer is one clear error
//! and `serve` answers the next question; wrong addresses, a port that is
//! not an RPC server and a LAN bind without consent are refused before
//! ggml (which aborts) sees them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrite::llm::{Engine, GenParams, LlmError, LoadOptions};
use ferrite::rpc::{Endpoint, RpcError};

use crate::common::{self, check_golden, golden, model_path, GOLDENS};

/// A `ferrite rpc-server` child, killed when dropped.
struct RpcServer {
    child: Child,
    endpoint: Endpoint,
}

impl RpcServer {
    fn start(extra: &[&str]) -> RpcServer {
        let port = crate::common::free_port();
        let child = Command::new(common::ferrite_bin())
            .args(["rpc-server", "-p", &port.to_string(), "-t", "1"])
            .args(extra)
            .env_remove("FERRITE_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferrite rpc-server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rpc-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        RpcServer {
            child,
            endpoint: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn split_opts(servers: &[&RpcServer]) -> LoadOptions {
    LoadOptions {
        rpc: servers.iter().map(|s| s.endpoint.clone()).collect(),
        ..Default::default()
    }
}

fn greedy_answer(e: &Engine, q: &str) -> Result<String, LlmError> {
    let mut s = e.session(ferrite::llm::SessionOptions {
        ctx_tokens: 1024,
        threads: 2,
        ..Default::default()
    })?;
    let p = GenParams {
        n_predict: Some(48),
        ..GenParams::greedy()
    };
    let mut text = String::new();
    s.ask(q, &p, &mut |piece| {
        text.push_str(piece);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(text)
}

#[test]
fn a_model_split_over_two_servers_answers_the_goldens() {
    let (a, b) = (RpcServer::start(&[]), RpcServer::start(&[]));
    let e = Engine::load("smollm2-135m", model_path(), &split_opts(&[&a, &b])).unwrap();
    let (devices, layers) = e.remote();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(layers > 0 && layers <= 31, "{layers} layers on the servers");
    let before = e.remote_traffic();
    let mut tokens = 0;
    for name in GOLDENS {
        let (q, want) = golden(name);
        let got = greedy_answer(&e, &q).unwrap();
        tokens += e.tokenize(&got).len() as u64;
        check_golden(&q, &want, &got);
    }
    // The output layer stayed here: what came back per generated token is a
    // hidden state (576 floats), never the 49,152 logits.
    let received = e.remote_traffic().1 - before.1;
    assert!(
        received / tokens < 49_152 * 4 / 8,
        "{received} bytes back for {tokens} tokens"
    );
    drop(e);
    // --tensor-split: one weight per server, checked before loading.
    let mut o = split_opts(&[&a, &b]);
    o.tensor_split = vec![1.0];
    let err = Engine::load("smollm2-135m", model_path(), &o)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            LlmError::Rpc(RpcError::Split {
                given: 1,
                servers: 2
            })
        ),
        "{err}"
    );
    o.tensor_split = vec![3.0, 1.0];
    let e = Engine::load("smollm2-135m", model_path(), &o).unwrap();
    let (q, want) = golden(GOLDENS[0]);
    check_golden(&q, &want, &greedy_answer(&e, &q).unwrap());
}

#[test]
fn rpc_server_mem_caps_the_memory_it_reports() {
    let s = RpcServer::start(&["--mem", "64"]);
    let links = ferrite::rpc::attach(std::slice::from_ref(&s.endpoint)).unwrap();
    let d = &links[0].devices[0];
    assert_eq!((d.free, d.total), (64 << 20, 64 << 20), "{d:?}");
    let home = tempfile::tempdir().unwrap();
    let ep = s.endpoint.to_string();
    let out = common::ferrite(home.path(), &["board", "show", "--rpc", &ep]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("# rpc: {ep} device RPC0 (64 MiB free of 64)")),
        "{shown}"
    );
    // Through the relay in front of ggml's server, the model still answers.
    let e = Engine::load("smollm2-135m", model_path(), &split_opts(&[&s])).unwrap();
    let (q, want) = golden(GOLDENS[1]);
    check_golden(&q, &want, &greedy_answer(&e, &q).unwrap());
}

/// Lines of a child's stdout, read on a thread so a wait can time out.
fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        // Pieces end at spaces: the prompt "> " has no newline after it.
        loop {
            buf.clear();
            match r.read_until(b' ', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Read from `rx` into `seen` until `want` appears past byte `from` (at
/// most 2 minutes); where it ends.
fn read_until(rx: &mpsc::Receiver<String>, seen: &mut String, from: usize, want: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(at) = seen.get(from..).and_then(|s| s.find(want)) {
            return from + at + want.len();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(piece) => seen.push_str(&piece),
            Err(_) => panic!("no {want:?} in serve's output:\n{seen}"),
        }
    }
}

#[test]
fn a_server_lost_mid_answer_is_one_error_and_serve_answers_the_next_question() {
    let home = tempfile::tempdir().unwrap();
    common::put_in_store(home.path(), "smollm2-135m", model_path());
    let (a, b) = (RpcServer::start(&[]), RpcServer::start(&[]));
    let rpc = format!("{},{}", a.endpoint, b.endpoint);
    let mut serve = Command::new(common::ferrite_bin())
        .args(["serve", "--stdio", "--temp", "0", "-n", "400", "-c", "1024"])
        .args(["--rpc", &rpc])
        .env("FERRITE_HOME", home.path())
        .env_remove("FERRITE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = serve.stdin.take().unwrap();
    let rx = lines_of(serve.stdout.take().unwrap());
    let mut seen = String::new();
    let at = read_until(&rx, &mut seen, 0, "> ");
    writeln!(stdin, "Write a long story about a brave dragon.").unwrap();
    // The answer has started on the split model: unplug the second board.
    let at = read_until(&rx, &mut seen, at, "dragon ");
    drop(b);
    let at = read_until(&rx, &mut seen, at, "error: the RPC server at");
    let at = read_until(&rx, &mut seen, at, "stopped answering");
    // The model is loaded again (here alone: the server is gone) and the
    // console asks for the next question.
    let before = read_until(&rx, &mut seen, at, "> ");
    writeln!(stdin, "What is the capital of Japan?").unwrap();
    read_until(&rx, &mut seen, before, "Tokyo");
    drop(stdin);
    let status = common::wait_exit(&mut serve, Duration::from_secs(60), "serve");
    let mut err = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}\n{seen}\n{err}");
    assert_eq!(seen.matches("error:").count(), 1, "{seen}");
    assert!(!seen[before..].contains("error"), "{seen}");
    assert!(err.contains("running on this board alone"), "{err}");
    drop(a);
}

#[test]
fn bad_servers_are_refused_before_ggml_sees_them() {
    let home = tempfile::tempdir().unwrap();
    common::put_in_store(home.path(), "smollm2-135m", model_path());
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_at = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = common::ferrite(home.path(), &["ask", "--rpc", &closed_at, "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach the RPC server at"), "{err}");
    // A port that answers, but not in ggml's protocol.
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_at = http.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in http.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let out = common::ferrite(home.path(), &["ask", "--rpc", &http_at, "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a ggml RPC server"), "{err}");
    let out = common::ferrite(home.path(), &["ask", "--rpc", "nowhere", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not HOST:PORT"));
    let out = common::ferrite(home.path(), &["rpc-server", "--host", "0.0.0.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--allow-lan"), "{err}");
}

/// `POST /v1/chat/completions` with one question, greedy: the status and
/// the body.
fn chat(base: &str, q: &str) -> (u16, String) {
    let body = serde_json::json!({
        "model": crate::http::model_name(),
        "messages": [{"role": "user", "content": q}],
        "temperature": 0,
        "max_tokens": 24,
    });
    match ureq::post(&format!("{base}/v1/chat/completions"))
        .timeout(Duration::from_secs(120))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_http_api_alone_loads_the_model_again_when_its_server_is_gone() {
    let s = RpcServer::start(&[]);
    let home = tempfile::tempdir().unwrap();
    let rpc = s.endpoint.to_string();
    let srv = crate::http::start_in(home.path(), &["--rpc", &rpc]);
    let (code, body) = chat(&srv.base, "What is the capital of Japan?");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Tokyo"), "{body}");
    drop(s);
    // The answer computed on the vanished server is an error, not garbage...
    let (code, body) = chat(&srv.base, "What is the capital of Japan?");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("stopped answering"), "{body}");
    // ...and the server, still on its port, loads the model alone.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, body) = chat(&srv.base, "What is the capital of Japan?");
        if code == 200 {
            assert!(body.contains("Tokyo"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{code} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A proxy in front of `to` that reads ggml's request frames (`cmd: u8`,
/// `size: u64`, body) and closes both sides of a connection instead of
/// passing on the `nth` request of command `cmd` (ggml-rpc.cpp's numbers): a
/// board lost at that point of a model's load or answer.
fn cutting_proxy(to: &Endpoint, (cmd, nth): (u8, usize)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap().to_string();
    let to = to.to_string();
    std::thread::spawn(move || {
        let mut seen = 0;
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&to) else {
                return;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
            });
            let mut head = [0u8; 9];
            while c_in.read_exact(&mut head).is_ok() {
                if head[0] == cmd {
                    seen += 1;
                    if seen == nth {
                        break;
                    }
                }
                let size = u64::from_le_bytes(head[1..].try_into().unwrap());
                let mut body = (&mut c_in).take(size);
                if s_out.write_all(&head).is_err() || std::io::copy(&mut body, &mut s_out).is_err()
                {
                    break;
                }
            }
            let _ = c_in.shutdown(std::net::Shutdown::Both);
            let _ = s_out.shutdown(std::net::Shutdown::Both);
        }
    });
    at
}

#[test]
fn a_server_lost_at_any_point_of_a_load_is_one_error_never_an_abort() {
    let s = RpcServer::start(&[]);
    let home = tempfile::tempdir().unwrap();
    common::put_in_store(home.path(), "smollm2-135m", model_path());
    // ALLOC_BUFFER 0, BUFFER_GET_BASE 3, BUFFER_CLEAR 5, SET_TENSOR 6,
    // GET_TENSOR 8, GRAPH_COMPUTE 10, GET_DEVICE_MEMORY 11: from the load to
    // the answer.
    let points = [
        (0, 1),
        (0, 2),
        (3, 1),
        (3, 2),
        (5, 1),
        (6, 1),
        (6, 40),
        (10, 1),
        (8, 1),
        (11, 2),
    ];
    for point in points {
        let proxy = cutting_proxy(&s.endpoint, point);
        let out = common::ferrite(
            home.path(),
            &["ask", "--rpc", &proxy, "--ngl", "99", "-n", "4", "Hi"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "cut at {point:?}: {err}");
        assert!(
            err.contains("stopped answering") || err.contains("is not a ggml RPC server"),
            "cut at {point:?}: {err}"
        );
    }
    // The same server, reached directly, still serves.
    let ep = s.endpoint.to_string();
    let out = common::ferrite(
        home.path(),
        &[
            "ask",
            "--rpc",
            &ep,
            "--temp",
            "0",
            "-n",
            "12",
            "What is the capital of Japan?",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Tokyo"));
    // Named twice: refused, not counted twice.
    let twice = format!("{ep},{ep}");
    let out = common::ferrite(home.path(), &["ask", "--rpc", &twice, "Hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("named twice"), "{err}");
}

#[test]
fn a_server_of_a_newer_protocol_is_refused_before_ggml_sees_it() {
    // Answers HELLO as a protocol 7.1 server would (ggml's client aborts on
    // a newer minor).
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = fake.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in fake.incoming().flatten() {
            let mut hello = [0u8; 1 + 8 + 24];
            if c.read_exact(&mut hello).is_ok() {
                let mut answer = 28u64.to_le_bytes().to_vec();
                answer.extend_from_slice(&[7, 1, 0, 0]);
                answer.resize(8 + 28, 0);
                let _ = c.write_all(&answer);
            }
        }
    });
    let home = tempfile::tempdir().unwrap();
    common::put_in_store(home.path(), "smollm2-135m", model_path());
    for args in [
        &["ask", "--rpc", &at, "Hi"][..],
        &["board", "show", "--rpc", &at][..],
    ] {
        let out = common::ferrite(home.path(), args);
        let all = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(134), "{args:?}: {all}");
        assert!(all.contains("RPC protocol 7.1"), "{args:?}: {all}");
    }
}
