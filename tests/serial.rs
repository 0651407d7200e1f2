//! `ferrite serve` over a real pseudo-terminal pair made by `socat`, with the
//! real model: the line protocol, commands, editing, Ctrl-C, garbage, the port
//! vanishing and coming back, JSON mode, and memory over many queries.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{ferrite_bin, model_path};

/// A `socat` pty pair: `dev` is ferrite's "serial port", `term` the user's end.
struct PtyPair {
    socat: Child,
    dev: PathBuf,
    term: PathBuf,
}

impl PtyPair {
    fn start(dir: &Path) -> PtyPair {
        let dev = dir.join("ttyFERRITE");
        let term = dir.join("ttyTERM");
        let _ = std::fs::remove_file(&dev);
        let _ = std::fs::remove_file(&term);
        let socat = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", term.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is needed for the serial tests (apt-get install socat)");
        let t0 = Instant::now();
        while !(dev.exists() && term.exists()) {
            assert!(t0.elapsed() < Duration::from_secs(10), "socat made no ptys");
            thread::sleep(Duration::from_millis(20));
        }
        PtyPair { socat, dev, term }
    }

    /// Unplug: the links go first, then the ptys. Killed, socat leaves its
    /// links behind pointing at freed `/dev/pts/N` numbers, which another
    /// test's pair may be given next; a ferrite waiting for its port would
    /// then open that other test's terminal (CI saw exactly this: the
    /// returning port got no banner while a queued test's pty had it).
    fn stop(&mut self) {
        let _ = std::fs::remove_file(&self.dev);
        let _ = std::fs::remove_file(&self.term);
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user's terminal: writes bytes, collects everything ferrite sends.
struct Term {
    file: File,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Where the next `expect` starts looking.
    mark: usize,
}

impl Term {
    fn open(path: &Path) -> Term {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut reader = file.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            file,
            seen,
            mark: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.file.write_all(bytes).unwrap();
        self.file.flush().unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()[self.mark..]).into_owned()
    }

    /// Wait until `pat` appears after the mark; move the mark past it and
    /// return what came before it.
    fn expect(&mut self, pat: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let hay = &seen[self.mark..];
                if let Some(i) = hay.windows(pat.len()).position(|w| w == pat.as_bytes()) {
                    let before = String::from_utf8_lossy(&hay[..i]).into_owned();
                    self.mark += i + pat.len();
                    return before;
                }
            }
            if t0.elapsed() > timeout {
                panic!("timed out waiting for {pat:?}; got:\n{}", self.text());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until nothing new has arrived for `quiet`.
    fn settle(&mut self, quiet: Duration, timeout: Duration) {
        let t0 = Instant::now();
        let mut last = (self.seen.lock().unwrap().len(), Instant::now());
        while t0.elapsed() < timeout {
            thread::sleep(Duration::from_millis(50));
            let n = self.seen.lock().unwrap().len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                break;
            }
        }
        self.mark = self.seen.lock().unwrap().len();
    }
}

const T: Duration = Duration::from_secs(60);

/// A running `ferrite serve`, killed on drop. The pty tests take turns (a
/// timing assertion on 2 cores means little with four models decoding), and
/// the children do not spin-wait in OpenMP for the same reason.
struct Served {
    child: Child,
    _home: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: Mutex<()> = Mutex::new(());

impl Served {
    fn start(args: &[&str]) -> Served {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(ferrite_bin())
            .arg("serve")
            .args([
                "-m",
                model_path().to_str().unwrap(),
                "--temp",
                "0",
                "-t",
                "2",
            ])
            .args(args)
            .env("FERRITE_HOME", home.path())
            .env("FERRITE_LOG", "ferrite=info")
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Served {
            child,
            _home: home,
            _turn: turn,
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pair(args: &[&str]) -> (tempfile::TempDir, PtyPair, Served, Term) {
    let dir = tempfile::tempdir().unwrap();
    let pair = PtyPair::start(dir.path());
    let mut full = vec!["--port", pair.dev.to_str().unwrap()];
    full.extend_from_slice(args);
    let served = Served::start(&full);
    let mut term = Term::open(&pair.term);
    if args.contains(&"--json") {
        term.expect("\"ready\":true", T);
        term.expect("\n", T);
    } else {
        term.expect("model=", T);
        term.expect("> ", T);
    }
    (dir, pair, served, term)
}

#[test]
fn serial_query_commands_and_line_editing() {
    let (_d, _p, mut served, mut term) = start_pair(&["-n", "48"]);
    term.send(b"What is the capital of Japan?\r");
    let answer = term.expect("\r\n> ", T);
    assert!(answer.contains("Tokyo"), "{answer}");

    term.send(b"/stats\r");
    let stats = term.expect("\r\n> ", T);
    for want in ["tok/s", "ttft", "context:", "rss", "soc"] {
        assert!(stats.contains(want), "missing {want} in {stats}");
    }
    // LF and CRLF line ends work too, and CRLF is one line end, not two.
    term.send(b"/set temp 0.5\n");
    let set = term.expect("\r\n> ", T);
    assert!(set.contains("temp = 0.5"), "{set}");
    term.send(b"/show\r\n");
    let show = term.expect("\r\n> ", T);
    assert!(show.contains("temp=0.5"), "{show}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(term.text(), "", "CRLF was taken as two line ends");
    // Greedy again: the question below is checked for "Tokyo", which a
    // sampled answer at 0.5 may miss (CI once got "Kyoto, ...").
    term.send(b"/set temp 0\r");
    assert!(term.expect("\r\n> ", T).contains("temp = 0"));
    // Backspace (DEL and BS) edits the line.
    term.send(b"/resex\x7ft\r");
    let reset = term.expect("\r\n> ", T);
    assert!(reset.contains("(conversation forgotten)"), "{reset}");
    term.send(b"/help\x08p\r");
    assert!(term.expect("\r\n> ", T).contains("/reset"));
    // A control character the terminal never showed, erased (a public bug
    // report): the line is answered, and the echo erased nothing visible.
    term.send(b"What is the capital of Japan\x1b\x7f?\r");
    let answer = term.expect("\r\n> ", T);
    assert!(
        answer.starts_with("What is the capital of Japan?\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("Tokyo"), "{answer}");
    // Arrow keys and Home/End as the terminal sends them edit the line.
    term.send(b"stats\x1b[H/\x1b[F\r");
    assert!(term.expect("\r\n> ", T).contains("tok/s"));
    // Nothing but our own commands: no shell, clear errors.
    term.send(b"/bin/sh -c reboot\r");
    assert!(term.expect("\r\n> ", T).contains("error: unknown command"));
    term.send(b"/model ../../etc/passwd\r");
    assert!(term.expect("\r\n> ", T).contains("error:"));
    // Ctrl-C at the prompt clears the line.
    term.send(b"half a line\x03/stats\r");
    assert!(term.expect("\r\n> ", T).contains("^C"));
    assert!(term.expect("\r\n> ", T).contains("tok/s"));
    // /quit ends the session, not the service.
    term.send(b"/quit\r");
    term.expect("bye", T);
    term.expect("model=", T);
    assert!(served.alive());
}

#[test]
fn ctrl_c_cancels_an_answer_within_a_second() {
    let (_d, _p, _s, mut term) = start_pair(&["-n", "-1"]);
    term.send(b"Write a very long story about a dragon and a knight.\r");
    // Wait for the answer to be streaming.
    let t0 = Instant::now();
    while term.text().len() < 40 {
        assert!(t0.elapsed() < T, "no answer streamed: {}", term.text());
        thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    term.send(&[0x03]);
    term.expect("[cancelled]\r\n> ", T);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    // A BREAK condition arrives on a raw line as NUL and cancels the same way.
    term.send(b"Write another very long story about a castle.\r");
    let t0 = Instant::now();
    while term.text().len() < 40 {
        assert!(t0.elapsed() < T);
        thread::sleep(Duration::from_millis(10));
    }
    term.send(&[0x00]);
    term.expect("[cancelled]\r\n> ", T);
}

#[test]
fn garbage_does_not_crash_or_grow_memory() {
    let (_d, _p, served, mut term) = start_pair(&["-n", "16"]);
    term.send(b"What is the capital of Japan?\r");
    assert!(term.expect("\r\n> ", T).contains("Tokyo"));
    let before = served.rss_kib();

    // 1 MiB of random bytes, a 64 KiB line, invalid UTF-8, NULs.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let junk: Vec<u8> = (0..1 << 20)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    for chunk in junk.chunks(4096) {
        term.send(chunk);
    }
    term.send(b"\x03\r");
    term.settle(Duration::from_secs(2), Duration::from_secs(120));
    // Each kind of bad line gets its one error line.
    term.send(&vec![b'a'; 64 * 1024]);
    term.send(b"\r");
    assert!(term.expect("\r\n> ", T).contains("error: line too long"));
    term.send(b"\xff\xfe\xc3(\r");
    assert!(term
        .expect("\r\n> ", T)
        .contains("error: line is not valid UTF-8"));
    term.send(b"abc\x00def\r");
    assert!(term
        .expect("\r\n> ", T)
        .contains("error: line contains control characters"));

    term.send(b"/reset\r");
    term.expect("(conversation forgotten)", T);
    term.expect("> ", T);
    term.send(b"What is the capital of Japan?\r");
    let answer = term.expect("\r\n> ", T);
    assert!(answer.contains("Tokyo"), "{answer}");
    let after = served.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "rss grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn the_port_vanishing_and_returning_is_survived() {
    let (dir, mut pair, mut served, mut term) = start_pair(&["-n", "48"]);
    term.send(b"/stats\r");
    term.expect("\r\n> ", T);
    // Unplug: the pty pair and its device path disappear.
    pair.stop();
    drop(term);
    thread::sleep(Duration::from_millis(800));
    assert!(served.alive(), "ferrite exited when the port vanished");
    // Plug back in at the same path.
    let pair2 = PtyPair::start(dir.path());
    let mut term = Term::open(&pair2.term);
    term.expect("model=", T);
    term.expect("> ", T);
    term.send(b"What is the capital of Japan?\r");
    let answer = term.expect("\r\n> ", T);
    assert!(answer.contains("Tokyo"), "{answer}");
}

#[test]
fn json_mode_round_trip() {
    let (_d, _p, _s, mut term) = start_pair(&["--json", "-n", "48"]);
    term.send(b"{\"q\":\"What is the capital of Japan?\"}\n");
    let mut text = String::new();
    let done = loop {
        let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
        match v["token"].as_str() {
            Some(t) => text.push_str(t),
            None => break v,
        }
    };
    assert!(text.contains("Tokyo"), "{text}");
    assert_eq!(done["done"], true);
    assert!(done["stats"]["gen_tokens"].as_u64().unwrap() > 0);
    assert_eq!(done["finish"], "end_of_generation");

    term.send(b"{\"cmd\":\"stats\"}\n");
    let line = term.expect("\n", T);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert!(v["stats"]["rss_bytes"].as_u64().unwrap() > 0);
    term.send(b"{\"cmd\":\"reset\"}\n");
    let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
    assert_eq!(v["ok"], "reset");
    term.send(b"not json\n");
    let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("JSON"));
}

#[test]
fn json_cancel_stops_an_answer_and_unknown_fields_are_refused() {
    let (_d, _p, _s, mut term) = start_pair(&["--json", "-n", "-1"]);
    term.send(b"{\"q\":\"Write a very long story about a dragon and a knight.\"}\n");
    let mut tokens = 0;
    let done = loop {
        let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
        if v.get("token").is_none() {
            break v;
        }
        tokens += 1;
        if tokens == 5 {
            term.send(b"{\"cmd\": \"cancel\"}\n");
        }
    };
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["finish"], "cancelled", "{done}");
    // The cancel line was used up by the answer: nothing answers it later,
    // and the next request is answered normally.
    term.send(b"{\"q\":\"What is the capital of Japan?\",\"temperature\":0.5}\n");
    let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("unknown field `temperature`"), "{v}");
    term.send(b"{\"cmd\":\"cancel\"}\n");
    let v: serde_json::Value = serde_json::from_str(term.expect("\n", T).trim()).unwrap();
    assert_eq!(v["ok"], "cancel", "{v}");
}

/// systemd's side of `sd_notify`: a datagram socket collecting what the
/// service says, one message per datagram.
struct Notify {
    got: Arc<Mutex<Vec<String>>>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.lock().unwrap().push(msg);
            }
        });
        Notify { got }
    }

    /// Wait for a message containing `pat`; returns every message so far.
    fn expect(&self, pat: &str, timeout: Duration) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.iter().any(|m| m.contains(pat)) {
                return got;
            }
            assert!(
                t0.elapsed() < timeout,
                "no {pat:?} from the service; got {got:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn systemd_ready_before_the_port_exists_then_serves_and_stops_on_sigterm() {
    // A UART that is not enabled, a USB adapter plugged in later: READY
    // must not wait for the port, or systemd kills the service every 90 s.
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::bind(&dir.path().join("notify.sock"));
    let late = dir.path().join("ttyFERRITE");
    let mut child = Command::new(ferrite_bin())
        .args(["serve", "--port", late.to_str().unwrap(), "-m"])
        .arg(model_path())
        .args(["--temp", "0", "-t", "2", "-n", "-1"])
        .env("FERRITE_HOME", dir.path().join("home"))
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = notify.expect("READY=1", T);
    assert!(
        got[0].contains("EXTEND_TIMEOUT_USEC="),
        "start-up does not extend systemd's start timeout first: {got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("STATUS=loading model")),
        "{got:?}"
    );
    let got = notify.expect("STATUS=waiting for", T);
    assert!(got.iter().any(|m| m.contains("ttyFERRITE")), "{got:?}");
    // The loop is alive while it waits: the watchdog is fed (every 1 s).
    let pings = |n: &Notify| {
        n.got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count()
    };
    let before = pings(&notify);
    thread::sleep(Duration::from_millis(2500));
    assert!(
        pings(&notify) >= before + 2,
        "watchdog not fed while waiting for the port"
    );
    // The port appears: served.
    let pair = PtyPair::start(dir.path());
    let mut term = Term::open(&pair.term);
    term.expect("model=", T);
    term.expect("> ", T);
    notify.expect("STATUS=serving on", T);
    // SIGTERM in the middle of an answer: cancelled, STOPPING=1, exit 0.
    term.send(b"Write a very long story about a dragon and a knight.\r");
    let t0 = Instant::now();
    while term.text().len() < 40 {
        assert!(t0.elapsed() < T, "no answer streamed: {}", term.text());
        thread::sleep(Duration::from_millis(10));
    }
    crate::common::signal(child.id(), "TERM");
    let t0 = Instant::now();
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "SIGTERM did not end ferrite"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status after SIGTERM: {code:?}");
    notify.expect("STOPPING=1", Duration::from_secs(1));
}

#[test]
fn logs_are_plain_off_a_terminal_and_prioritised_under_journald() {
    // stderr to a file: no colour codes.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyMISSING");
    let run = |stderr: &Path, journal: bool| {
        let f = File::create(stderr).unwrap();
        let mut cmd = Command::new(ferrite_bin());
        cmd.args(["serve", "--port", missing.to_str().unwrap(), "-m"])
            .arg(model_path())
            .env("FERRITE_HOME", dir.path().join("home"))
            .env_remove("FERRITE_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if journal {
            use std::os::unix::fs::MetadataExt;
            let m = f.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        let mut child = cmd.stderr(f).spawn().unwrap();
        let t0 = Instant::now();
        while !std::fs::read_to_string(stderr).unwrap().contains("waiting") {
            assert!(t0.elapsed() < T, "no warning logged");
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read_to_string(stderr).unwrap()
    };
    let plain = run(&dir.path().join("err"), false);
    assert!(!plain.contains('\x1b'), "colour codes in a file: {plain:?}");
    assert!(plain.contains("WARN"), "{plain:?}");
    let journal = run(&dir.path().join("journal"), true);
    let line = journal.lines().find(|l| l.contains("waiting")).unwrap();
    assert!(line.starts_with("<4>"), "no warning priority: {line:?}");
    assert!(!line.contains("Z "), "a timestamp under journald: {line:?}");
    assert!(!journal.contains('\x1b'), "{journal:?}");
}

#[test]
fn two_hundred_queries_keep_memory_flat() {
    // A small context fills within the first dozen turns, so the KV cache is
    // fully touched before the first reading and the turn-dropping path runs
    // all the time: what grows after that is a leak.
    let (_d, _p, served, mut term) = start_pair(&["-n", "4", "-c", "256", "--no-echo"]);
    let mut rss = Vec::new();
    for i in 0..200 {
        term.send(format!("Say the number {i}.\r").as_bytes());
        term.expect("\r\n> ", T);
        if i == 30 || i == 199 {
            rss.push(served.rss_kib());
        }
    }
    let growth = rss[1] as i64 - rss[0] as i64;
    assert!(
        growth < 2 * 1024,
        "rss grew by {growth} KiB over 170 queries"
    );
}

#[test]
fn stdio_serves_until_end_of_input() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let out = crate::common::ferrite_with_input(
        home.path(),
        &["serve", "--stdio", "-m", model, "--temp", "0", "-n", "48"],
        b"What is the capital of Japan?\n/stats\n",
    );
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("ferrite ") && s.contains("model="), "{s}");
    assert!(s.contains("Tokyo") && s.contains("tok/s"), "{s}");
}

/// A question sent in the same write as `/model NAME` is answered by the new
/// model, not lost with the old conversation.
#[test]
fn input_after_a_model_switch_is_kept() {
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let imported =
        crate::common::ferrite(home.path(), &["models", "import", model, "--name", "alt"]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let out = crate::common::ferrite_with_input(
        home.path(),
        &["serve", "--stdio", "-m", model, "--temp", "0", "-n", "32"],
        b"/model alt\nWhat is the capital of Japan?\n",
    );
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let after = s
        .split("model=alt")
        .nth(1)
        .unwrap_or_else(|| panic!("no switch: {s}"));
    assert!(after.contains("Tokyo"), "{s}");
}

/// Run `serve --stdio` on a recorded input (`tests/golden/NAME.inp`, `-n 6`
/// greedy) and compare with the recorded output, numbers masked by `mask`.
fn replay(name: &str, extra: &[&str], mask: fn(&str) -> String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/");
    let input = std::fs::read(format!("{dir}{name}.inp")).unwrap();
    let want = std::fs::read_to_string(format!("{dir}{name}.out")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let model = model_path().to_str().unwrap();
    let mut args = vec![
        "serve", "--stdio", "-m", model, "--temp", "0", "-n", "6", "-t", "2",
    ];
    args.extend_from_slice(extra);
    let out = crate::common::ferrite_with_input(home.path(), &args, &input);
    assert!(out.status.success());
    crate::eqnice!(mask(&want), mask(&String::from_utf8_lossy(&out.stdout)));
}

/// The JSON line protocol's wire format, byte for byte: a session recorded
/// before the assistant core was rebuilt on typed events
/// (`tests/golden/json-session.{inp,out}`: every reply kind, every command,
/// every error) is replayed, only the measured numbers (times, sizes) masked:
/// a number right after a key (`"ttft_ms":12.5`) becomes `#`.
#[test]
fn json_protocol_wire_format_is_unchanged() {
    fn mask(s: &str) -> String {
        let mut o = String::with_capacity(s.len());
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            o.push(c);
            if o.ends_with("\":") && it.peek().is_some_and(|d| d.is_ascii_digit() || *d == '-') {
                while it
                    .peek()
                    .is_some_and(|d| d.is_ascii_digit() || matches!(d, '.' | '-' | '+' | 'e' | 'E'))
                {
                    it.next();
                }
                o.push('#');
            }
        }
        o
    }
    replay("json-session", &["--json"], mask);
}

/// The same for the text console (`tests/golden/text-session.{inp,out}`),
/// every run of digits masked as one `#`.
#[test]
fn text_console_output_is_unchanged() {
    fn mask(s: &str) -> String {
        let mut o = String::with_capacity(s.len());
        for c in s.chars() {
            if !c.is_ascii_digit() {
                o.push(c);
            } else if !o.ends_with('#') {
                o.push('#');
            }
        }
        o
    }
    replay("text-session", &[], mask);
}

/// `ferrite chat` on a real terminal (socat gives it a pseudo-terminal as
/// its controlling tty): rustyline edits the line, so arrow keys and End
/// move the cursor instead of reaching the model as `^[[D`; slash commands
/// are the console's; Ctrl-D ends the chat with status 0.
#[test]
fn chat_on_a_terminal_edits_lines_and_takes_commands() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let term_path = dir.path().join("ttyCHAT");
    let chat = format!(
        "{} chat -m {} --temp 0 -n 24 -t 2",
        ferrite_bin(),
        model_path().display()
    );
    let mut socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", term_path.display()))
        .arg(format!("EXEC:{chat},pty,setsid,ctty,stderr"))
        .env("FERRITE_HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !term_path.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no pty");
        thread::sleep(Duration::from_millis(20));
    }
    let mut term = Term::open(&term_path);
    term.expect("> ", T);
    term.send(b"What is the capital of Japn\x1b[Da\x1b[F?\r");
    // rustyline redraws the edited line; the answer shows the model got
    // "What is the capital of Japan?", not the escape sequence.
    let seen = term.expect("Tokyo", T);
    assert!(seen.contains("The capital of Japan is "), "{seen:?}");
    assert!(!seen.contains("^[[D"), "{seen:?}");
    term.expect("> ", T);
    term.send(b"/help\r");
    term.expect("/reset", T);
    term.expect("> ", T);
    term.send(b"\x04");
    let status = crate::common::wait_exit(&mut socat, T, "chat after ^D");
    assert!(status.success(), "{status:?}");
}
