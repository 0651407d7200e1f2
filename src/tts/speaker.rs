//! The mouth: sentences in, spoken on a thread of their own, so the model
//! goes on writing while the first sentence is heard.
//!
//! Audio is played in 50 ms chunks; between chunks the speaker looks at the
//! shared status, and when the ear has set it to `Listening` (push-to-talk
//! pressed, or speech begun) it stops at once: the queued sentences are
//! dropped and the sink discards what it holds (barge-in). While it speaks
//! the status is `Speaking` (the LED blinks slowly). The rest of a barged
//! answer stays unspoken until the next one `begin`s. The answer's text goes
//! on being written (the console still shows it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use super::playback::AudioSink;
use super::{Audio, SpeakOptions, Voice};
use crate::hw::{Status, StatusCell};

/// Milliseconds of audio handed to the sink at a time.
const CHUNK_MS: usize = 50;

/// A voice and a sink, driven from a thread.
pub struct Speaker {
    tx: Option<Sender<String>>,
    pending: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    barge_in: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Speaker {
    /// Start the speaking thread.
    pub fn spawn(
        voice: Box<dyn Voice>,
        sink: Box<dyn AudioSink + Send>,
        opts: SpeakOptions,
        status: StatusCell,
    ) -> Speaker {
        let (tx, rx) = mpsc::channel::<String>();
        let pending = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let barge_in = Arc::new(AtomicBool::new(true));
        let flags = Flags {
            pending: pending.clone(),
            stop: stop.clone(),
            barge_in: barge_in.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("speaker".into())
            .spawn(move || speak_loop(voice, sink, opts, status, rx, flags))
            .expect("spawn speaker thread");
        Speaker {
            tx: Some(tx),
            pending,
            stop,
            barge_in,
            thread: Some(thread),
        }
    }

    /// Whether speech heard while speaking stops it (on by default). Off
    /// for open speakers without echo cancellation, where the ear would
    /// hear the answer itself and cut it off.
    pub fn set_barge_in(&self, on: bool) {
        self.barge_in.store(on, Ordering::SeqCst);
    }

    /// A new answer begins: a barge-in on the last one no longer holds.
    pub fn begin(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Queue one sentence of the current answer (dropped if the answer was
    /// barged in on).
    pub fn say(&self, sentence: String) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &self.tx {
            if tx.send(sentence).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Stop speaking now, dropping what is queued.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether sentences are queued or being heard.
    pub fn is_speaking(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// Wait until everything queued has been heard (or stopped).
    pub fn wait(&self) {
        while self.is_speaking() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the speaking thread shares with its `Speaker`.
struct Flags {
    pending: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    barge_in: Arc<AtomicBool>,
}

fn speak_loop(
    mut voice: Box<dyn Voice>,
    mut sink: Box<dyn AudioSink + Send>,
    opts: SpeakOptions,
    status: StatusCell,
    rx: Receiver<String>,
    Flags {
        pending,
        stop,
        barge_in,
    }: Flags,
) {
    // Once the ear has barged in, the rest of this answer stays unspoken
    // (until `begin`), whatever the status does next.
    let barged = |stop: &AtomicBool| {
        if barge_in.load(Ordering::SeqCst) && status.get() == Status::Listening {
            stop.store(true, Ordering::SeqCst);
        }
        stop.load(Ordering::SeqCst)
    };
    for sentence in rx {
        // Without barge-in, speech heard meanwhile (the answer's own echo)
        // does not keep the answer from being spoken.
        let speaking: &[Status] = if barge_in.load(Ordering::SeqCst) {
            &[Status::Idle, Status::Thinking, Status::Speaking]
        } else {
            &[
                Status::Idle,
                Status::Thinking,
                Status::Speaking,
                Status::Listening,
            ]
        };
        if !barged(&stop) && status.transition(speaking, Status::Speaking) {
            let mut cut = false;
            let spoken = voice.speak_each(&sentence, &opts, &mut |a| {
                let n = (a.rate as usize * CHUNK_MS / 1000).max(1);
                for chunk in a.samples.chunks(n) {
                    if barged(&stop) {
                        cut = true;
                        return false;
                    }
                    let piece = Audio {
                        rate: a.rate,
                        samples: chunk.to_vec(),
                    };
                    if let Err(e) = sink.play(&piece) {
                        tracing::warn!(error = %crate::report(&e), "playback failed");
                        return false;
                    }
                }
                true
            });
            if let Err(e) = spoken {
                tracing::warn!(error = %crate::report(&e), "could not speak a sentence");
            }
            if cut {
                tracing::info!("barge-in: speaking stopped");
                sink.stop();
            }
        }
        if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            if !barged(&stop) {
                sink.drain();
            }
            status.transition(&[Status::Speaking], Status::Idle);
        }
    }
}
