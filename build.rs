//! Links ggml's RPC backend (`libggml-rpc.a`, built by boards/ggml.sh beside
//! the ggml that llama.cpp and whisper.cpp share) into every ferrite binary.
//!
//! llama-cpp-sys-2 and whisper-rs-sys name only ggml, ggml-base and ggml-cpu
//! for rustc, but ggml's registry (in libggml.a, built with GGML_USE_RPC)
//! calls `ggml_backend_rpc_reg`. This crate's libraries come before its
//! dependencies' on the link line, so the archive is linked whole: its objects
//! are in before libggml.a asks for them, and their own calls into ggml-base
//! are resolved by the dependencies' archives that follow. The search path is
//! the one llama-cpp-sys-2 prints for the ggml it found.
fn main() {
    println!("cargo:rustc-link-lib=static:-bundle,+whole-archive=ggml-rpc");
    println!("cargo:rerun-if-changed=build.rs");
}
