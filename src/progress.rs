//! Progress of long work (downloads, hashing, unpacking, training), reported
//! to whoever called: the library draws nothing. The CLI draws bars on
//! stderr, a service could log, tests stay quiet (`Quiet`).

/// What a task counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Steps,
}

/// Receives progress. Every method has a no-op default; one task runs at a
/// time (`start` … `finish`).
pub trait Progress: Send + Sync {
    /// A task named `what` of `total` units (0 if unknown) begins.
    fn start(&self, _what: &str, _total: u64, _unit: Unit) {}
    /// The task is at `pos` units (after a resume).
    fn position(&self, _pos: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status for the running task (loss, speed).
    fn status(&self, _msg: &str) {}
    /// A line worth keeping above the bar (an epoch's validation loss).
    fn note(&self, _line: &str) {}
    /// The task ended.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {}
