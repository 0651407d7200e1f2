//! ferrite's integration tests: one binary, real parts. The real SmolLM2
//! model is pulled into the store on first use (through the manifest, as a
//! user would) and loaded once per process; fast loader tests use a tiny
//! llama model that the tests write themselves.

mod common;

mod cli;
mod engine;
mod eval;
mod finetune;
mod fuzz;
mod gguf_files;
mod http;
mod long_speech;
mod prompt_cache;
mod pull;
mod qwen;
mod reports;
mod resample;
mod rpc;
mod serial;
mod speculative;
mod speech;
mod structured;
mod templates;
mod tts;
mod vad_model;
mod vocab;
mod wav_files;
