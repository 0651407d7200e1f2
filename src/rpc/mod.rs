//! A model split across boards with ggml's own RPC backend, as llama.cpp's
//! `rpc-server` and `--rpc` do it: a helper board serves its CPU (or GPU) as
//! a ggml device (`server`), and the main board's llama.cpp puts some of the
//! layers there (`attach`).
//!
//! Every remote is reached through a loopback relay (`relay`) that reads the
//! protocol, so a board that disappears mid-answer becomes one error
//! ([`RpcError::Lost`], seen by [`check`] after each decode) instead of
//! ggml's abort or an endless wait. ggml's protocol has neither
//! authentication nor encryption: servers bind to loopback unless told
//! otherwise (`server::check_bind`).

mod relay;
pub mod server;

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llama_cpp_sys_2 as sys;

pub use server::{serve, ServerOptions};

/// How long a remote may take to answer one request before the link counts
/// as lost: its share of a 512-token prompt batch included, which a Pi 4
/// computes for half a 3B model in about a minute. A remote that is gone
/// (closed, reset, or no longer acknowledging keepalive probes) is noticed
/// long before; this bounds only a remote process that hangs.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long connecting and the first handshake may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

extern "C" {
    // ggml-rpc.h (ggml's RPC backend, linked by build.rs).
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
}

/// Errors of the RPC split.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("`{0}` is not HOST:PORT (e.g. 192.168.1.20:50052)")]
    Endpoint(String),
    #[error("cannot reach the RPC server at {endpoint} (is `ferrite rpc-server` running there, on that port?)")]
    Unreachable {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} is not a ggml RPC server this build can use: {why}")]
    Handshake { endpoint: Endpoint, why: String },
    #[error("the RPC server at {endpoint} stopped answering ({why}); what it computed is lost")]
    Lost { endpoint: Endpoint, why: String },
    #[error("--tensor-split has {given} values for {servers} --rpc servers")]
    Split { given: usize, servers: usize },
    #[error("--tensor-split takes weights of 0 or more, not all 0 (e.g. 3,1)")]
    SplitWeights,
    #[error("{0} is named twice in --rpc: name each server once")]
    Duplicate(Endpoint),
    #[error("cannot start the relay to {endpoint}")]
    Relay {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("ggml's RPC backend did not take {0} (run with -v to see ggml's log)")]
    Register(Endpoint),
    #[error("refusing to serve ggml's RPC protocol on {0}: it has no authentication and no encryption, so anyone who reaches the port can run code on this board's memory; bind to 127.0.0.1, or pass --allow-lan on a network you trust")]
    NotLoopback(String),
    #[error("cannot serve on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this build's ggml has no device to serve")]
    NoDevice,
}

/// A `HOST:PORT` where a `ferrite rpc-server` (or llama.cpp's `rpc-server`)
/// listens. Checked here, before ggml's parser (which aborts) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl FromStr for Endpoint {
    type Err = RpcError;

    fn from_str(s: &str) -> Result<Endpoint, RpcError> {
        let bad = || RpcError::Endpoint(s.to_string());
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        if host.is_empty() || port == 0 || !host.chars().all(plain) {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether every address the host names is a loopback address.
    pub fn is_loopback(&self) -> bool {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return ip.is_loopback();
        }
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
            Err(_) => false,
        }
    }

    /// Parse a comma-separated list (`--rpc A,B`, llama.cpp's form).
    ///
    /// # Errors
    /// `RpcError::Endpoint` for the first item that is not `HOST:PORT`.
    pub fn parse_list(s: &str) -> Result<Vec<Endpoint>, RpcError> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }
}

/// One device a remote serves, as llama.cpp's device list holds it.
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    pub endpoint: Endpoint,
    /// Index in ggml's device list (`LlamaModelParams::with_devices`).
    pub index: usize,
    /// ggml's name for it: `RPC<n>`, its number on that server.
    pub name: String,
    /// Bytes free and in all, as the remote reports them.
    pub free: u64,
    pub total: u64,
}

/// A live link to one remote: its relay and the devices ggml registered
/// through it. Engines hold it; while one does, [`check`] watches it.
pub struct Link {
    endpoint: Endpoint,
    relay: relay::Relay,
    pub devices: Vec<RemoteDevice>,
}

impl Link {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Bytes sent to the remote and received from it since the link was
    /// made (ggml's frames, as they cross the network).
    pub fn traffic(&self) -> (u64, u64) {
        self.relay.state.traffic()
    }

    fn lost(&self) -> Option<RpcError> {
        self.relay.state.lost().map(|why| RpcError::Lost {
            endpoint: self.endpoint.clone(),
            why,
        })
    }
}

/// Every link made in this process. A link lasts as long as the process
/// (ggml cannot unregister a device); a lost one stays here, unused, and a
/// later `attach` to its endpoint makes a new one.
static LINKS: Mutex<Vec<Arc<Link>>> = Mutex::new(Vec::new());

/// Connect to each of `endpoints` (an existing link that still stands is
/// reused), register their devices with ggml (whose device registry
/// starts itself on first use), and read their memory.
///
/// # Errors
/// `Unreachable`, `Handshake` (not an RPC server, another protocol version,
/// or busy with another client), `Relay`, `Register`.
pub fn attach(endpoints: &[Endpoint]) -> Result<Vec<Arc<Link>>, RpcError> {
    for (i, ep) in endpoints.iter().enumerate() {
        if endpoints[..i].contains(ep) {
            return Err(RpcError::Duplicate(ep.clone()));
        }
    }
    let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        let live = links
            .iter()
            .find(|l| &l.endpoint == ep && l.lost().is_none())
            .cloned();
        let link = match live {
            Some(l) => l,
            None => {
                let l = Arc::new(connect(ep)?);
                links.push(Arc::clone(&l));
                l
            }
        };
        out.push(link);
    }
    Ok(out)
}

/// The remotes' free memory now (asked again, not the figure read when
/// the link was made), summed: what the memory check adds to this board's.
///
/// # Errors
/// As `attach`.
pub fn pooled_free(endpoints: &[Endpoint]) -> Result<u64, RpcError> {
    if endpoints.is_empty() {
        return Ok(0);
    }
    let links = attach(endpoints)?;
    let mut free = 0;
    for d in links.iter().flat_map(|l| &l.devices) {
        let (mut f, mut t) = (0usize, 0usize);
        // SAFETY: a registered device; ggml asks the remote through the relay.
        unsafe { sys::ggml_backend_dev_memory(sys::ggml_backend_dev_get(d.index), &mut f, &mut t) };
        free += f as u64;
    }
    check(&links)?;
    Ok(free)
}

fn connect(ep: &Endpoint) -> Result<Link, RpcError> {
    probe(ep)?;
    let relay =
        relay::Relay::start("127.0.0.1:0", &ep.to_string(), ANSWER_TIMEOUT).map_err(|source| {
            RpcError::Relay {
                endpoint: ep.clone(),
                source,
            }
        })?;
    let local = CString::new(relay.local.to_string()).expect("an address has no NUL");
    // SAFETY: `local` is a NUL-terminated "127.0.0.1:PORT" ggml's parser
    // takes; the relay answers every request there, so ggml never aborts.
    let reg = unsafe { ggml_backend_rpc_add_server(local.as_ptr()) };
    if reg.is_null() {
        return Err(RpcError::Register(ep.clone()));
    }
    // SAFETY: `reg` is the registry ggml just made; registering it adds its
    // devices to ggml's device list (llama.cpp's --rpc does the same).
    unsafe { sys::ggml_backend_register(reg) };
    let mut devices = Vec::new();
    // SAFETY: plain queries of ggml's device lists; the pointers outlive the
    // process (ggml never frees a registered device).
    unsafe {
        for i in 0..sys::ggml_backend_reg_dev_count(reg) {
            let dev = sys::ggml_backend_reg_dev_get(reg, i);
            let index = (0..sys::ggml_backend_dev_count())
                .find(|&j| sys::ggml_backend_dev_get(j) == dev)
                .ok_or_else(|| RpcError::Register(ep.clone()))?;
            let (mut free, mut total) = (0usize, 0usize);
            sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
            devices.push(RemoteDevice {
                endpoint: ep.clone(),
                index,
                name: cstr(sys::ggml_backend_dev_name(dev)),
                free: free as u64,
                total: total as u64,
            });
        }
    }
    if let Some(why) = relay.state.lost() {
        return Err(RpcError::Handshake {
            endpoint: ep.clone(),
            why,
        });
    }
    tracing::info!(endpoint = %ep, relay = %relay.local, devices = devices.len(), "RPC server attached");
    Ok(Link {
        endpoint: ep.clone(),
        relay,
        devices,
    })
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated names that live as long as the device.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Say HELLO to `ep` ourselves before ggml does, so a wrong address, a
/// server of another version or one busy with another client is a clear
/// error here rather than ggml's abort.
fn probe(ep: &Endpoint) -> Result<(), RpcError> {
    let unreachable = |source| RpcError::Unreachable {
        endpoint: ep.clone(),
        source,
    };
    let mut s = relay::connect(&ep.to_string(), Some(PROBE_TIMEOUT)).map_err(unreachable)?;
    let handshake = |why: String| RpcError::Handshake {
        endpoint: ep.clone(),
        why,
    };
    let mut hello = vec![relay::cmd::HELLO];
    let caps = relay::answer_size(relay::cmd::HELLO, &[]).expect("HELLO is answered") - 4;
    hello.extend_from_slice(&caps.to_le_bytes());
    hello.resize(hello.len() + caps as usize, 0);
    s.write_all(&hello).map_err(unreachable)?;
    let mut answer = [0u8; 8 + 4];
    s.read_exact(&mut answer).map_err(|e| {
        handshake(match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "no answer to HELLO within 5 s (another kind of server, or an RPC server busy with another client: ggml's serves one at a time)"
                    .to_string()
            }
            _ => format!("no answer to HELLO ({e})"),
        })
    })?;
    let size = u64::from_le_bytes(answer[..8].try_into().expect("8 bytes"));
    if size != caps + 4 {
        return Err(handshake(format!("a HELLO answer of {size} bytes")));
    }
    if !relay::version_ok(answer[8], answer[9]) {
        return Err(handshake(format!(
            "it speaks RPC protocol {}.{}, this build {}.{} (the same ggml version is needed on both sides)",
            answer[8],
            answer[9],
            relay::PROTO_MAJOR,
            relay::PROTO_MINOR
        )));
    }
    Ok(())
}

/// Whether every link an engine holds still stands: `Lost` names the first
/// that does not. Called after each decode on a split model (an atomic load
/// per link), since the relay then answers with zeros and the logits are
/// garbage.
///
/// # Errors
/// `RpcError::Lost`.
pub fn check(links: &[Arc<Link>]) -> Result<(), RpcError> {
    links.iter().find_map(|l| l.lost()).map_or(Ok(()), Err)
}

/// Report `weights[i]`'s share of the remotes' total free memory as remote
/// `i`'s free memory to llama.cpp, which splits the offloaded layers in
/// proportion to it (`--tensor-split`, llama.cpp's name).
///
/// # Errors
/// `RpcError::Split` when the counts differ or no weight is positive.
pub fn set_split(links: &[Arc<Link>], weights: &[f32]) -> Result<(), RpcError> {
    if weights.len() != links.len() {
        return Err(RpcError::Split {
            given: weights.len(),
            servers: links.len(),
        });
    }
    let sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || sum <= 0.0 || sum.is_nan() {
        return Err(RpcError::SplitWeights);
    }
    let pool: u64 = links.iter().flat_map(|l| &l.devices).map(|d| d.free).sum();
    for (l, &w) in links.iter().zip(weights) {
        let n = l.devices.len().max(1) as f64;
        let share = (pool as f64 * f64::from(w) / sum / n) as u64;
        l.relay.state.report_free(Some(share), false);
    }
    Ok(())
}

/// Free bytes on the remotes, summed (what the memory check adds to this
/// board's own).
pub fn free_bytes(links: &[Arc<Link>]) -> u64 {
    links.iter().flat_map(|l| &l.devices).map(|d| d.free).sum()
}

/// How many of the `n_layer` repeating layers go to the remotes when the
/// user did not say (`--ngl`): in proportion to the memory each side has
/// (`local_bytes`: this board's limit), at least one, all of them when
/// nothing is known locally. (llama.cpp's `n_gpu_layers` counts the output
/// layer too: the caller adds it.)
pub fn remote_layers(n_layer: u32, local_bytes: Option<u64>, remote_bytes: u64) -> u32 {
    if n_layer == 0 {
        return 0;
    }
    match local_bytes {
        Some(local) if local + remote_bytes > 0 => {
            let share = remote_bytes as f64 / (local + remote_bytes) as f64;
            ((f64::from(n_layer) * share).round() as u32).clamp(1, n_layer)
        }
        _ => n_layer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_before_ggml_sees_them() {
        let e: Endpoint = "192.168.1.20:50052".parse().unwrap();
        assert_eq!((e.host(), e.port()), ("192.168.1.20", 50052));
        assert_eq!(e.to_string(), "192.168.1.20:50052");
        let v6: Endpoint = "[::1]:50052".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:50052");
        assert!(v6.is_loopback());
        assert!("localhost:1".parse::<Endpoint>().unwrap().is_loopback());
        assert!(!"10.0.0.2:1".parse::<Endpoint>().unwrap().is_loopback());
        for bad in [
            "", "host", "host:", ":50052", "h:0", "h:70000", "h:p", "a b:1", "h;rm:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
        let list = Endpoint::parse_list("127.0.0.1:1, 127.0.0.1:2").unwrap();
        assert_eq!(list.len(), 2);
        assert!(Endpoint::parse_list("127.0.0.1:1,nope").is_err());
    }

    #[test]
    fn layers_follow_memory() {
        assert_eq!(remote_layers(30, Some(1 << 30), 2 << 30), 20);
        assert_eq!(remote_layers(30, Some(1 << 30), 0), 1);
        assert_eq!(remote_layers(30, Some(0), 1 << 30), 30);
        assert_eq!(remote_layers(30, None, 1 << 30), 30);
        assert_eq!(remote_layers(0, Some(1), 1), 0);
    }

    #[test]
    fn answer_sizes_follow_ggml_rpc() {
        use relay::cmd;
        assert_eq!(relay::answer_size(cmd::HELLO, &[]), Some(28));
        assert_eq!(relay::answer_size(cmd::GET_DEVICE_MEMORY, &[]), Some(16));
        assert_eq!(relay::answer_size(6, &[]), None); // SET_TENSOR
        assert_eq!(relay::answer_size(10, &[]), None); // GRAPH_COMPUTE
        let mut req = vec![0u8; 296 + 16];
        req[304..].copy_from_slice(&1234u64.to_le_bytes());
        assert_eq!(relay::answer_size(cmd::GET_TENSOR, &req), Some(1234));
        assert_eq!(relay::answer_size(cmd::GET_TENSOR, &req[..300]), None);
    }
}
