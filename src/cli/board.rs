//! `ferrite board detect | list | show`: profiles and what the hardware has.

use std::io::Write;
use std::path::Path;

use ferrite::board::{self, Board};
use ferrite::llm;

use super::args::BoardCmd;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, cmd: BoardCmd, out: &mut Out) -> anyhow::Result<()> {
    match cmd {
        BoardCmd::Detect => {
            let d = board::detect(Path::new("/"));
            writeln!(out, "{}", d.profile)?;
            if let Some(m) = d.model {
                eprintln!("device tree model: {m}");
            }
        }
        BoardCmd::List => {
            for n in Board::names() {
                let b = Board::load(n)?;
                writeln!(out, "{:<18} {}", n, b.description)?;
            }
        }
        BoardCmd::Show { name, rpc } => {
            let b = match name {
                Some(n) => Board::load(&n)?,
                None => ctx.board.clone(),
            };
            show(&b, out)?;
            let servers = rpc.map_or_else(|| b.rpc_endpoints(), |r| r.0);
            remote(&servers, out)?;
        }
    }
    Ok(())
}

/// The profile as TOML, then what this machine has at run time.
fn show(b: &Board, out: &mut Out) -> anyhow::Result<()> {
    write!(out, "{}", b.to_toml())?;
    writeln!(out)?;
    writeln!(out, "# seen at run time")?;
    let build = if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "cpu"
    };
    writeln!(out, "# build: {} {build}", std::env::consts::ARCH)?;
    // ggml's kernels are what matter (the next line); this is only the Rust
    // side, which armv7's target leaves without NEON.
    let neon = if cfg!(target_feature = "neon") {
        "on"
    } else {
        "off"
    };
    writeln!(
        out,
        "# rust code: {} with NEON {neon}",
        std::env::consts::ARCH
    )?;
    writeln!(out, "# ggml: {}", llm::system_info()?)?;
    let gpus = llm::gpu_devices()?;
    if gpus.is_empty() {
        if cfg!(feature = "cuda") {
            writeln!(out, "# WARNING: CUDA build but no GPU found: all {} requested layers will run on the CPU", b.gpu_layers)?;
        } else {
            writeln!(out, "# gpu: none (CPU build); layers on GPU: 0")?;
        }
    } else {
        for g in &gpus {
            writeln!(out, "# gpu: {g}")?;
        }
        writeln!(
            out,
            "# layers on GPU: up to {} (gpu_layers / --n-gpu-layers)",
            b.gpu_layers
        )?;
    }
    if let Some(t) = board::Governor::new(b, b.threads(), Path::new("/")).temperature_c() {
        writeln!(
            out,
            "# soc temperature: {t:.1} °C (limit {:.1})",
            b.thermal_limit_c
        )?;
    }
    if let Some(a) = board::available_bytes(Path::new("/")) {
        writeln!(out, "# memory available: {} MiB", a >> 20)?;
    }
    Ok(())
}

/// The devices each RPC server serves, with their memory, or why it cannot
/// be used.
fn remote(servers: &[ferrite::rpc::Endpoint], out: &mut Out) -> anyhow::Result<()> {
    for ep in servers {
        match ferrite::rpc::attach(std::slice::from_ref(ep)) {
            Ok(links) => {
                for d in links.iter().flat_map(|l| &l.devices) {
                    writeln!(
                        out,
                        "# rpc: {ep} device {} ({} MiB free of {})",
                        d.name,
                        d.free >> 20,
                        d.total >> 20
                    )?;
                }
            }
            Err(e) => writeln!(out, "# rpc: {ep} unusable: {}", ferrite::report(&e))?,
        }
    }
    Ok(())
}
