//! `ferrite rpc-server`: this board's CPU (or its GPUs, in a CUDA build)
//! served to other boards with ggml's own RPC server
//! (`ggml_backend_rpc_start_server`, the code behind llama.cpp's
//! `rpc-server`), so a llama.cpp main host can use it as well as ferrite.
//!
//! The bind address is checked first: ggml's protocol lets any client that
//! reaches the port allocate memory and run graphs, with no authentication
//! and no encryption, so only loopback is served unless `allow_lan`. With
//! `mem_bytes`, ggml serves on a private loopback port and a relay in front
//! of it reports at most that much memory (ggml's server reports the whole
//! device's).

use std::ffi::{c_char, CString};
use std::net::TcpListener;
use std::path::PathBuf;

use llama_cpp_sys_2 as sys;

use super::{relay, Endpoint, RpcError};

extern "C" {
    // ggml-rpc.h: serves until the process ends.
    fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut sys::ggml_backend_dev_t,
    );
}

/// What `ferrite rpc-server` serves, and where.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: Endpoint,
    /// CPU threads for the graphs this server computes.
    pub threads: usize,
    /// At most this much memory reported to clients (llama.cpp splits layers
    /// by it); `None`: the device's own figure.
    pub mem_bytes: Option<u64>,
    /// Serve on a non-loopback address (a network the user trusts).
    pub allow_lan: bool,
    /// ggml's tensor cache (`rpc-server -c`): large weights are sent once,
    /// then named by hash on later loads.
    pub cache_dir: Option<PathBuf>,
}

/// Refuse a non-loopback address unless the user allowed it.
///
/// # Errors
/// `RpcError::NotLoopback`.
pub fn check_bind(listen: &Endpoint, allow_lan: bool) -> Result<(), RpcError> {
    if allow_lan || listen.is_loopback() {
        Ok(())
    } else {
        Err(RpcError::NotLoopback(listen.to_string()))
    }
}

/// The devices to serve: the GPUs when there are any, else the CPU
/// (llama.cpp's rpc-server picks the same way).
fn devices() -> Vec<sys::ggml_backend_dev_t> {
    let mut gpus = Vec::new();
    let mut cpu = Vec::new();
    // SAFETY: plain queries of ggml's device list.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            let reg = super::cstr(sys::ggml_backend_reg_name(
                sys::ggml_backend_dev_backend_reg(dev),
            ));
            match sys::ggml_backend_dev_type(dev) {
                sys::GGML_BACKEND_DEVICE_TYPE_GPU if reg != "RPC" => gpus.push(dev),
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => cpu.push(dev),
                _ => {}
            }
        }
    }
    if gpus.is_empty() {
        cpu
    } else {
        gpus
    }
}

/// Serve until the process is stopped.
///
/// # Errors
/// `NotLoopback`, `Bind` (the port is taken), `NoDevice`; once serving, it
/// does not return.
pub fn serve(opts: &ServerOptions) -> Result<(), RpcError> {
    check_bind(&opts.listen, opts.allow_lan)?;
    if !opts.listen.is_loopback() {
        tracing::warn!(listen = %opts.listen, "serving ggml's RPC protocol beyond this machine: no authentication, no encryption");
    }
    let bind_err = |source| RpcError::Bind {
        addr: opts.listen.to_string(),
        source,
    };
    // ggml's server prints "Failed to create server socket" and returns on a
    // taken port: try the port here first for a clear error.
    let probe = TcpListener::bind((opts.listen.host(), opts.listen.port())).map_err(bind_err)?;
    let mut devs = devices();
    if devs.is_empty() {
        return Err(RpcError::NoDevice);
    }
    // ggml's own parser takes only a dotted IPv4 address: an IPv6 address
    // or a name is served by a relay, as `--mem` is.
    let ipv4 = opts.listen.host().parse::<std::net::Ipv4Addr>().is_ok();
    let ggml_at = if opts.mem_bytes.is_none() && ipv4 {
        drop(probe);
        opts.listen.to_string()
    } else {
        // ggml on a private port, the relay on the public one.
        let inner = TcpListener::bind("127.0.0.1:0").map_err(bind_err)?;
        let inner_at = inner.local_addr().map_err(bind_err)?.to_string();
        drop((inner, probe));
        let r =
            relay::Relay::start_server(&opts.listen.to_string(), &inner_at).map_err(bind_err)?;
        r.state.report_free(opts.mem_bytes, true);
        std::mem::forget(r);
        inner_at
    };
    tracing::info!(listen = %opts.listen, devices = devs.len(), threads = opts.threads, "rpc-server");
    let endpoint = CString::new(ggml_at).expect("an address has no NUL");
    let cache = opts
        .cache_dir
        .as_ref()
        .map(|d| CString::new(d.to_string_lossy().into_owned()).unwrap_or_default());
    // SAFETY: NUL-terminated strings and a device array that outlive the call
    // (it serves until the process ends).
    unsafe {
        ggml_backend_rpc_start_server(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            opts.threads,
            devs.len(),
            devs.as_mut_ptr(),
        );
    }
    // ggml returns only when it could not set up (it printed why).
    Err(RpcError::Bind {
        addr: opts.listen.to_string(),
        source: std::io::Error::other("ggml's RPC server stopped"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_binds_need_consent() {
        let lan: Endpoint = "0.0.0.0:50052".parse().unwrap();
        assert!(matches!(
            check_bind(&lan, false),
            Err(RpcError::NotLoopback(_))
        ));
        assert!(check_bind(&lan, true).is_ok());
        assert!(check_bind(&"127.0.0.1:50052".parse().unwrap(), false).is_ok());
    }
}
