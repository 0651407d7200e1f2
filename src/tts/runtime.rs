//! ONNX Runtime, loaded once per process from a shared library in the store
//! (`onnxruntime-<arch>`, from the `onnxruntime` wheels): ort's `load-dynamic`
//! mode, because its build-time download cannot work offline.
//!
//! The library is opened here first, so a wrong or missing file is a clear
//! error instead of a panic inside ort.

use std::path::Path;
use std::sync::OnceLock;

use super::TtsError;

/// The store's model name for this machine's runtime library.
pub fn model_name() -> String {
    format!("onnxruntime-{}", std::env::consts::ARCH)
}

/// Load ONNX Runtime from `path` (once; later calls must name the same
/// library, or get the first one).
///
/// # Errors
/// `TtsError::Runtime` when the library cannot be opened (wrong
/// architecture, missing, not a library) or the environment cannot start.
pub fn init(path: &Path) -> Result<(), TtsError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: a pinned ONNX Runtime build; its initialisers are C++ only.
        let probe = unsafe { libloading::Library::new(path) };
        if let Err(e) = probe {
            return Err(format!("cannot open the library: {e}"));
        }
        ort::init_from(path.display().to_string())
            .with_name("ferrite")
            .commit()
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|msg| TtsError::Runtime {
        path: path.to_path_buf(),
        msg,
        source: None,
    })
}
