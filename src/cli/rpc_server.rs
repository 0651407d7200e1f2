//! `ferrite rpc-server`: this board's CPU (or GPUs) served to a main board
//! that splits a model across boards (`--rpc`), with ggml's own RPC server.

use ferrite::rpc::{self, Endpoint, ServerOptions};

use super::args::RpcServerArgs;
use super::Ctx;

pub(crate) fn run(ctx: &Ctx, a: RpcServerArgs) -> anyhow::Result<()> {
    let listen: Endpoint = format!("{}:{}", bracket(&a.host), a.port).parse()?;
    let cache_dir = if a.cache {
        let dir = ctx.store.root().join("rpc-cache");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot make the tensor cache {}: {e}", dir.display()))?;
        Some(dir)
    } else {
        None
    };
    let opts = ServerOptions {
        listen,
        threads: a.threads.unwrap_or_else(|| ctx.board.threads()) as usize,
        mem_bytes: a.mem.map(|m| m << 20),
        allow_lan: a.allow_lan,
        cache_dir,
    };
    // llama.cpp's backend up first: ggml's log goes to tracing like the rest.
    ferrite::llm::system_info()?;
    rpc::serve(&opts)?;
    Ok(())
}

/// An IPv6 address as `--host` takes it, bracketed for HOST:PORT.
fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
