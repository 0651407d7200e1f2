//! Logs: `tracing` to stderr, quiet unless `-v` (llama.cpp's and whisper.cpp's
//! own logs are routed into it and shown from `-v`), `FERRITE_LOG` for a full
//! filter.

pub(crate) fn init(verbose: u8) {
    let default = match verbose {
        0 => "ferrite=warn,llama_cpp_2=off",
        1 => "info,llama_cpp_2=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .init();
}
