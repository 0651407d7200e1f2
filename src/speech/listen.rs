//! The ear: audio source → utterances → transcripts, on two threads.
//!
//! One thread reads the `AudioSource` in 20 ms chunks and cuts utterances,
//! either with the VAD alone or, when a push-to-talk button is wired, from
//! press to release (the VAD then only checks that the held audio holds
//! speech). A second thread runs whisper on each utterance, so capture never
//! stalls behind a transcription (an ALSA overrun would lose audio). What was
//! heard goes to the assistant loop over a bounded channel as `Heard`.

use std::sync::mpsc::{self, Receiver, SyncSender};

use super::neural_vad::Gate;
use super::vad::{Vad, VadConfig};
use super::whisper::{Transcriber, Transcript};
use super::{AudioSource, Pcm16k};
use crate::hw::{Button, Status, StatusCell};

/// What the ear hands the assistant.
#[derive(Debug)]
pub enum Heard {
    /// A transcribed utterance (never empty text).
    Utterance(Transcript),
    /// Capture or transcription failed; the ear stops.
    Failed(String),
    /// The audio source ended (end of the WAV files).
    End,
}

const CHUNK: usize = 320;

/// Start listening; `gate` (Silero) drops candidates that hold no speech
/// before whisper sees them. Dropping the receiver stops both threads.
pub fn spawn(
    mut source: Box<dyn AudioSource + Send>,
    stt: Transcriber,
    gate: Option<Gate>,
    vad: VadConfig,
    mut ptt: Option<Button>,
    status: StatusCell,
) -> Receiver<Heard> {
    let (utt_tx, utt_rx) = mpsc::sync_channel::<Option<Pcm16k>>(4);
    let (heard_tx, heard_rx) = mpsc::sync_channel::<Heard>(8);
    let cap_heard = heard_tx.clone();
    let cap_status = status.clone();
    std::thread::Builder::new()
        .name("ear-capture".into())
        .spawn(move || {
            let result = capture(&mut *source, vad, ptt.as_mut(), &utt_tx, &cap_status);
            if let Err(e) = result {
                let _ = cap_heard.send(Heard::Failed(e));
            }
            let _ = utt_tx.send(None);
        })
        .expect("spawn capture thread");
    std::thread::Builder::new()
        .name("ear-stt".into())
        .spawn(move || transcribe(stt, gate, utt_rx, heard_tx, status))
        .expect("spawn transcription thread");
    heard_rx
}

fn capture(
    source: &mut dyn AudioSource,
    cfg: VadConfig,
    mut ptt: Option<&mut Button>,
    out: &SyncSender<Option<Pcm16k>>,
    status: &StatusCell,
) -> Result<(), String> {
    let mut vad = Vad::new(cfg);
    let mut held: Vec<f32> = Vec::new();
    let mut pressed = false;
    let mut buf = vec![0f32; CHUNK];
    let send = |u: Pcm16k| out.send(Some(u)).is_ok();
    loop {
        let n = source.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        match ptt.as_deref_mut() {
            Some(button) => {
                let now = button.is_low().unwrap_or(false);
                if now {
                    if !pressed {
                        tracing::info!("push-to-talk pressed");
                        status.set(Status::Listening);
                    }
                    held.extend_from_slice(chunk);
                } else if pressed {
                    tracing::info!(
                        seconds = held.len() as f64 / 16000.0,
                        "push-to-talk released"
                    );
                    status.set(Status::Idle);
                    if let Some(u) = held_speech(cfg, std::mem::take(&mut held)) {
                        if !send(u) {
                            return Ok(());
                        }
                    }
                }
                pressed = now;
            }
            None => {
                for u in vad.push(chunk) {
                    if !send(u) {
                        return Ok(());
                    }
                }
                match status.get() {
                    Status::Thinking => {}
                    // New speech while an answer is spoken: barge in.
                    Status::Speaking => {
                        if vad.in_speech() {
                            status.set(Status::Listening);
                        }
                    }
                    _ => status.set(if vad.in_speech() {
                        Status::Listening
                    } else {
                        Status::Idle
                    }),
                }
            }
        }
    }
    let last = if ptt.is_some() {
        held_speech(cfg, held)
    } else {
        vad.finish()
    };
    if let Some(u) = last {
        send(u);
    }
    Ok(())
}

/// The speech in audio recorded while the button was held, if any.
fn held_speech(cfg: VadConfig, held: Vec<f32>) -> Option<Pcm16k> {
    let parts = Vad::split(
        VadConfig {
            max_utterance_ms: u32::MAX / 2,
            ..cfg
        },
        &Pcm16k(held),
    );
    if parts.is_empty() {
        tracing::info!("push-to-talk: no speech in the recording");
        return None;
    }
    Some(Pcm16k(parts.into_iter().flat_map(|p| p.0).collect()))
}

fn transcribe(
    stt: Transcriber,
    mut gate: Option<Gate>,
    rx: Receiver<Option<Pcm16k>>,
    tx: SyncSender<Heard>,
    status: StatusCell,
) {
    while let Ok(Some(u)) = rx.recv() {
        status.set(Status::Thinking);
        let speech = match gate.as_mut().map_or(Ok(true), |g| g.holds_speech(&u)) {
            Ok(false) => {
                status.set(Status::Idle);
                continue;
            }
            Ok(true) => Ok(()),
            Err(e) => Err(e),
        };
        let heard = match speech.and_then(|()| stt.transcribe(&u)) {
            Ok(t) if t.text.is_empty() => {
                tracing::info!(seconds = u.seconds(), "utterance held no words");
                status.set(Status::Idle);
                continue;
            }
            Ok(t) => Heard::Utterance(t),
            Err(e) => Heard::Failed(e.to_string()),
        };
        let failed = matches!(heard, Heard::Failed(_));
        if tx.send(heard).is_err() || failed {
            return;
        }
    }
    status.set(Status::Idle);
    let _ = tx.send(Heard::End);
}
