//! A loopback relay between ggml's RPC client and one remote RPC server,
//! that reads ggml's wire protocol frame by frame.
//!
//! ggml's client aborts the process when a server stops answering
//! (`RPC_STATUS_ASSERT` -> `GGML_ABORT` in ggml-rpc.cpp) and waits forever on
//! a server that neither answers nor closes. ferrite's console must survive
//! a board unplugged mid-answer, so ggml never talks to a remote directly: it
//! connects to this relay on 127.0.0.1, and the relay forwards each request
//! and its answer. When the remote closes, errs, sends a frame of the wrong
//! size, stops acknowledging TCP keepalive probes (about 25 s: a board that
//! lost power or its cable) or does not answer a request within `timeout`
//! (a remote process that hangs), the relay marks the link lost and from
//! then on answers ggml itself, with frames of the sizes ggml expects (all
//! zero). ggml finishes its graph on garbage without aborting; the session
//! checks the link after each decode (`rpc::check`) and throws that answer
//! away with one clear error.
//!
//! The framing (ggml-rpc.cpp, protocol 7): a request is `cmd: u8`,
//! `size: u64` (little-endian), `size` bytes; some commands are answered by
//! `size: u64`, `size` bytes, and ggml checks that size exactly. Which ones,
//! and of what size, is `answer_size`. The relay also rewrites two fields:
//! the HELLO's transport capabilities (zeroed: the remote must stay on this
//! TCP stream, not upgrade to RDMA past the relay) and, when asked, the free
//! memory a device reports (`--tensor-split` and `rpc-server --mem` set
//! llama.cpp's split through it).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// ggml-rpc's command numbers (`enum rpc_cmd`, protocol 7).
pub(crate) mod cmd {
    pub const ALLOC_BUFFER: u8 = 0;
    pub const GET_ALIGNMENT: u8 = 1;
    pub const GET_MAX_SIZE: u8 = 2;
    pub const BUFFER_GET_BASE: u8 = 3;
    pub const SET_TENSOR_HASH: u8 = 7;
    pub const GET_TENSOR: u8 = 8;
    pub const COPY_TENSOR: u8 = 9;
    pub const GET_DEVICE_MEMORY: u8 = 11;
    pub const GET_ALLOC_SIZE: u8 = 13;
    pub const HELLO: u8 = 14;
    pub const DEVICE_COUNT: u8 = 15;
    /// One past the last command (`RPC_CMD_COUNT`).
    pub const COUNT: u8 = 19;
}

/// The protocol version this build's ggml speaks (`RPC_PROTO_MAJOR_VERSION`,
/// `RPC_PROTO_MINOR_VERSION`): ggml refuses a server of another major or of
/// a newer minor.
pub(crate) const PROTO_MAJOR: u8 = 7;
pub(crate) const PROTO_MINOR: u8 = 0;

/// Whether ggml's client accepts a server of version `major.minor`: the
/// same major, a minor no newer than its own.
pub(crate) fn version_ok(major: u8, minor: u8) -> bool {
    major == PROTO_MAJOR && u16::from(minor) <= u16::from(PROTO_MINOR)
}
/// `RPC_CONN_CAPS_SIZE` (transport.h): the HELLO's capability bytes.
const CAPS: usize = 24;
/// `sizeof(rpc_tensor)` (ggml-rpc.cpp, packed): a GET_TENSOR request is one,
/// then `offset: u64`, `size: u64`.
const RPC_TENSOR: usize = 8 + 4 + 8 + 4 * 4 + 4 * 4 + 4 + 64 + 4 + 10 * 8 + 8 + 8 + 8 + 64 + 4;
/// The largest request ggml sends that the relay holds whole (all but tensor
/// data, which is streamed through): a graph of 64k nodes is well below.
const MAX_HELD: u64 = 256 << 20;

/// Where a request's answer comes from: its size, or `None` when ggml
/// expects no answer. `req` is the request body (GET_TENSOR names its size).
pub(crate) fn answer_size(cmd: u8, req: &[u8]) -> Option<u64> {
    Some(match cmd {
        cmd::ALLOC_BUFFER | cmd::GET_DEVICE_MEMORY => 16,
        cmd::GET_ALIGNMENT | cmd::GET_MAX_SIZE | cmd::BUFFER_GET_BASE | cmd::GET_ALLOC_SIZE => 8,
        cmd::SET_TENSOR_HASH | cmd::COPY_TENSOR => 1,
        cmd::DEVICE_COUNT => 4,
        cmd::HELLO => 4 + CAPS as u64,
        cmd::GET_TENSOR => {
            let at = RPC_TENSOR + 8;
            u64::from_le_bytes(req.get(at..at + 8)?.try_into().ok()?)
        }
        _ => return None,
    })
}

/// Commands whose body the relay keeps (to rewrite it, or to size the
/// answer); the others (SET_TENSOR, GRAPH_COMPUTE) are streamed through.
fn held(cmd: u8) -> bool {
    matches!(cmd, cmd::HELLO | cmd::GET_TENSOR | cmd::GET_DEVICE_MEMORY)
}

/// What a relay knows of its link, shared with the code that asks whether
/// an answer can be trusted.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    lost: AtomicBool,
    why: Mutex<Option<String>>,
    /// Free bytes to report for every device instead of the remote's own
    /// figure (`--tensor-split`, `rpc-server --mem`); the total is capped
    /// to it as well when `cap_total`.
    free_override: Mutex<Option<(u64, bool)>>,
    /// Bytes forwarded to the remote and back (frames included).
    sent: AtomicU64,
    received: AtomicU64,
}

impl LinkState {
    pub(crate) fn lost(&self) -> Option<String> {
        if !self.lost.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default(),
        )
    }

    fn lose(&self, why: String) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            tracing::info!(why = %why, "RPC link lost");
            *w = Some(why);
        }
        self.lost.store(true, Ordering::Release);
    }

    /// Bytes sent to the remote and received from it so far.
    pub(crate) fn traffic(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn report_free(&self, bytes: Option<u64>, cap_total: bool) {
        *self.free_override.lock().unwrap_or_else(|p| p.into_inner()) =
            bytes.map(|b| (b, cap_total));
    }
}

/// A listening relay: ggml connects to `local`, the relay to `remote`.
pub(crate) struct Relay {
    pub(crate) local: SocketAddr,
    pub(crate) state: Arc<LinkState>,
}

/// Which side of the link a relay stands on.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// In front of ggml's client: a remote that fails or is silent for the
    /// timeout loses the link, and the relay answers in its place.
    Client(Duration),
    /// In front of ggml's server (`rpc-server --mem`): no timeouts (a server
    /// waits for its client as long as it likes); a failure closes only that
    /// client's connection.
    Server,
}

impl Relay {
    /// Listen on `listen` (port 0: any free port) and relay every
    /// connection from ggml's client to `remote`, each on a thread of its own.
    pub(crate) fn start(listen: &str, remote: &str, timeout: Duration) -> io::Result<Relay> {
        Self::spawn(listen, remote, Role::Client(timeout))
    }

    /// Listen on `listen` for remote clients and relay them to ggml's
    /// server at `server`.
    pub(crate) fn start_server(listen: &str, server: &str) -> io::Result<Relay> {
        Self::spawn(listen, server, Role::Server)
    }

    fn spawn(listen: &str, remote: &str, role: Role) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        let local = listener.local_addr()?;
        let state = Arc::new(LinkState::default());
        let shared = Arc::clone(&state);
        let remote = remote.to_string();
        std::thread::Builder::new()
            .name(format!("rpc-relay {remote}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (state, remote) = (Arc::clone(&shared), remote.clone());
                    let _ = std::thread::Builder::new()
                        .name("rpc-relay-conn".into())
                        .spawn(move || serve_conn(conn, &remote, &state, role));
                }
            })?;
        Ok(Relay { local, state })
    }
}

/// Connect to `addr` within `timeout`, trying each address it names; reads
/// and writes then time out after it too (`None`: never).
pub(crate) fn connect(addr: &str, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for a in addr.to_socket_addrs()? {
        let conn = match timeout {
            Some(t) => TcpStream::connect_timeout(&a, t),
            None => TcpStream::connect(a),
        };
        match conn {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                if timeout.is_some() {
                    // The kernel of a board that lost power or its cable
                    // stops acknowledging: noticed in about 25 s, while a
                    // remote that is only slow keeps answering the probes.
                    let probes = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(10))
                        .with_interval(Duration::from_secs(5))
                        .with_retries(3);
                    socket2::SockRef::from(&s).set_tcp_keepalive(&probes)?;
                }
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One of ggml's connections: requests in from `client`, answered by the
/// remote while it lasts, then by the relay.
fn serve_conn(client: TcpStream, remote: &str, state: &LinkState, role: Role) {
    let (timeout, fake) = match role {
        Role::Client(t) => (Some(t), true),
        Role::Server => (None, false),
    };
    let _ = client.set_nodelay(true);
    let Ok(client_w) = client.try_clone() else {
        return;
    };
    let mut from = BufReader::with_capacity(1 << 16, client);
    let mut to = BufWriter::with_capacity(1 << 16, client_w);
    let mut up = if state.lost().is_some() {
        None
    } else {
        match connect(remote, timeout) {
            Ok(s) => Upstream::new(s),
            Err(e) if fake => {
                state.lose(format!("cannot connect: {e}"));
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "ggml's RPC server is not answering");
                return;
            }
        }
    };
    // Until ggml closes its socket (the model was freed) or sends what is
    // not a request.
    while let Some((head, body)) = read_request(&mut from) {
        let (cmd, size) = (head[0], frame_size(&head));
        let want = answer_size(cmd, body.as_deref().unwrap_or(&[]));
        let answered = match up.as_mut() {
            Some(u) => u.forward(&head, body.as_deref(), &mut from, want, state),
            None if body.is_none() => match stream_body(&mut from, None, size) {
                Ok(()) => Err(Forward::Lost(None)),
                Err(_) => Err(Forward::Client),
            },
            None => Err(Forward::Lost(None)),
        };
        if answered.is_ok() {
            let back = want.map_or(0, |w| w + 8);
            state.sent.fetch_add(9 + size, Ordering::Relaxed);
            state.received.fetch_add(back, Ordering::Relaxed);
        }
        let written = match answered {
            Ok(None) => Ok(()),
            Ok(Some(answer)) => to
                .write_all(&(answer.len() as u64).to_le_bytes())
                .and_then(|()| to.write_all(&answer)),
            Err(Forward::Client) => break,
            Err(Forward::Lost(why)) if !fake => {
                tracing::warn!(
                    why = why.as_deref().unwrap_or(""),
                    "RPC client connection ended"
                );
                break;
            }
            Err(Forward::Lost(why)) => {
                if let Some(why) = why {
                    state.lose(why);
                }
                if let Some(u) = up.take() {
                    let _ = u.stream.shutdown(Shutdown::Both);
                }
                fake_answer(cmd, want, &mut to)
            }
        };
        if written.and_then(|()| to.flush()).is_err() {
            break;
        }
    }
}

fn frame_size(head: &[u8; 9]) -> u64 {
    u64::from_le_bytes(head[1..].try_into().expect("8 bytes"))
}

/// The next request's head (`cmd`, `size`) from ggml, and its body when the
/// relay holds it (`held`); `None` at the end of the connection or on a
/// malformed frame.
fn read_request(from: &mut BufReader<TcpStream>) -> Option<([u8; 9], Option<Vec<u8>>)> {
    let mut head = [0u8; 9];
    from.read_exact(&mut head).ok()?;
    let (cmd, size) = (head[0], frame_size(&head));
    if cmd >= cmd::COUNT || (held(cmd) && size > MAX_HELD) {
        tracing::error!(cmd, size, "malformed request from ggml's RPC client");
        return None;
    }
    if !held(cmd) {
        return Some((head, None));
    }
    let mut b = vec![0u8; size as usize];
    from.read_exact(&mut b).ok()?;
    Some((head, Some(b)))
}

/// Why a request could not be forwarded: ggml's side failed (nothing to
/// answer), or the remote did (answer in its place, `Some` saying why when
/// this request found out).
enum Forward {
    Client,
    Lost(Option<String>),
}

struct Upstream {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Upstream {
    fn new(stream: TcpStream) -> Option<Upstream> {
        let reader = BufReader::with_capacity(1 << 16, stream.try_clone().ok()?);
        let writer = BufWriter::with_capacity(1 << 16, stream.try_clone().ok()?);
        Some(Upstream {
            stream,
            reader,
            writer,
        })
    }

    /// Send one request (its held `body`, or its `size` bytes streamed
    /// from `from`) and read its answer of `want` bytes, rewritten where the
    /// relay rewrites. The request is read whole from ggml even when the
    /// remote fails part-way, so the next frame lines up.
    fn forward(
        &mut self,
        head: &[u8; 9],
        body: Option<&[u8]>,
        from: &mut BufReader<TcpStream>,
        want: Option<u64>,
        state: &LinkState,
    ) -> Result<Option<Vec<u8>>, Forward> {
        let (cmd, size) = (head[0], frame_size(head));
        let mut sent = self.writer.write_all(head);
        match body {
            // No transport upgrade past the relay: the HELLO advertises no caps.
            Some(b) if cmd == cmd::HELLO => {
                sent = sent.and_then(|()| self.writer.write_all(&vec![0u8; b.len()]))
            }
            Some(b) => sent = sent.and_then(|()| self.writer.write_all(b)),
            None => {
                let w = if sent.is_ok() {
                    Some(&mut self.writer)
                } else {
                    None
                };
                stream_body(from, w, size).map_err(|e| match e {
                    StreamError::Client => Forward::Client,
                    StreamError::Remote(e) => Forward::Lost(Some(format!("send: {e}"))),
                })?;
            }
        }
        let lost = |what: &str, e: io::Error| Forward::Lost(Some(format!("{what}: {e}")));
        sent.and_then(|()| self.writer.flush())
            .map_err(|e| lost("send", e))?;
        let Some(want) = want else {
            return Ok(None);
        };
        let mut len = [0u8; 8];
        self.reader
            .read_exact(&mut len)
            .map_err(|e| lost("no answer", e))?;
        let got = u64::from_le_bytes(len);
        if got != want {
            return Err(Forward::Lost(Some(format!(
                "answered {got} bytes to command {cmd}, {want} expected (another ggml version?)"
            ))));
        }
        let mut answer = vec![0u8; want as usize];
        self.reader
            .read_exact(&mut answer)
            .map_err(|e| lost("answer cut short", e))?;
        if cmd == cmd::HELLO && !version_ok(answer[0], answer[1]) {
            return Err(Forward::Lost(Some(format!(
                "speaks RPC protocol {}.{}, this build {PROTO_MAJOR}.{PROTO_MINOR}",
                answer[0], answer[1]
            ))));
        }
        if cmd == cmd::GET_DEVICE_MEMORY {
            rewrite_memory(&mut answer, state);
        }
        Ok(Some(answer))
    }
}

enum StreamError {
    Client,
    Remote(io::Error),
}

/// Copy `size` bytes of a streamed request body from ggml to the remote
/// (`to`; `None` drops them). A client-side failure ends the connection; a
/// remote one is reported after the whole body is read, so the next
/// request's frame lines up.
fn stream_body(
    from: &mut BufReader<TcpStream>,
    mut to: Option<&mut BufWriter<TcpStream>>,
    size: u64,
) -> Result<(), StreamError> {
    let mut left = size;
    let mut buf = vec![0u8; 1 << 16];
    let mut failed: Option<io::Error> = None;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        from.read_exact(&mut buf[..n])
            .map_err(|_| StreamError::Client)?;
        if let (None, Some(w)) = (&failed, to.as_mut()) {
            failed = w.write_all(&buf[..n]).err();
        }
        left -= n as u64;
    }
    failed.map_or(Ok(()), |e| Err(StreamError::Remote(e)))
}

/// `GET_DEVICE_MEMORY`'s answer (`free: u64`, `total: u64`) with the
/// relay's override in place of the remote's free memory.
fn rewrite_memory(answer: &mut [u8], state: &LinkState) {
    let over = *state
        .free_override
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let (Some((free, cap_total)), true) = (over, answer.len() == 16) {
        let total = u64::from_le_bytes(answer[8..].try_into().expect("8 bytes"));
        let free = if cap_total { free.min(total) } else { free };
        answer[..8].copy_from_slice(&free.to_le_bytes());
        if cap_total {
            answer[8..].copy_from_slice(&total.min(free).to_le_bytes());
        }
    }
}

/// Answer ggml in the remote's place: frames of the sizes it expects, with
/// values its asserts accept (ggml-rpc.cpp and ggml-backend.cpp check a
/// buffer's base is not null, an alignment is a power of two, a HELLO's
/// version is theirs); the rest zeros. A zero ALLOC_BUFFER is a failed
/// allocation, which llama.cpp reports as such.
fn fake_answer(cmd: u8, want: Option<u64>, to: &mut BufWriter<TcpStream>) -> io::Result<()> {
    let Some(want) = want else {
        return Ok(());
    };
    let mut answer = vec![0u8; want as usize];
    let put = |a: &mut [u8], v: u64| a[..8].copy_from_slice(&v.to_le_bytes());
    match cmd {
        cmd::HELLO => answer[..2].copy_from_slice(&[PROTO_MAJOR, PROTO_MINOR]),
        cmd::DEVICE_COUNT => answer[..4].copy_from_slice(&1u32.to_le_bytes()),
        cmd::BUFFER_GET_BASE => put(&mut answer, 1 << 12),
        cmd::GET_ALIGNMENT => put(&mut answer, 64),
        cmd::GET_MAX_SIZE => put(&mut answer, u64::MAX >> 1),
        _ => {}
    }
    to.write_all(&want.to_le_bytes())?;
    to.write_all(&answer)
}
