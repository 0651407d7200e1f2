//! Where spoken audio goes: the `AudioSink` seam.
//!
//! `AlsaSink` plays through ALSA (`crate::alsa`, loaded at run time), 16-bit
//! mono at the voice's rate; ALSA's `plug` layer converts to what the device
//! takes. `MemorySink` keeps the samples (for `say -o` and the tests). A sink
//! can be stopped at once (barge-in): ALSA drops what is queued.

use std::ffi::{c_int, c_ulong, c_void};

use super::{Audio, TtsError};
use crate::alsa::{Alsa, OpenError, PcmPtr, SND_PCM_STREAM_PLAYBACK};

/// A place to play audio.
pub trait AudioSink {
    /// Queue `audio` for playing; may block while the device buffer is full.
    ///
    /// # Errors
    /// `TtsError::Playback` when the device fails.
    fn play(&mut self, audio: &Audio) -> Result<(), TtsError>;
    /// Stop at once, dropping what is queued.
    fn stop(&mut self);
    /// Wait until what is queued has been heard.
    fn drain(&mut self);
}

/// Audio kept in memory.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub audio: Audio,
}

impl AudioSink for MemorySink {
    fn play(&mut self, audio: &Audio) -> Result<(), TtsError> {
        self.audio.rate = audio.rate;
        self.audio.samples.extend_from_slice(&audio.samples);
        Ok(())
    }
    fn stop(&mut self) {}
    fn drain(&mut self) {}
}

/// A speaker through ALSA.
pub struct AlsaSink {
    alsa: Alsa,
    pcm: PcmPtr,
    rate: u32,
    device: String,
    buf: Vec<i16>,
}

// SAFETY: the PCM handle is used from one thread at a time (&mut self).
unsafe impl Send for AlsaSink {}

fn playback_err(msg: String) -> TtsError {
    TtsError::Playback(msg)
}

impl AlsaSink {
    /// Open `device` (`default`, `plughw:1,0`, `null`, ...) for 16-bit mono
    /// playback at `rate` Hz, with 100 ms of device buffer.
    ///
    /// # Errors
    /// `TtsError::Playback` when ALSA is missing or the device refuses.
    pub fn open(device: &str, rate: u32) -> Result<AlsaSink, TtsError> {
        let alsa = Alsa::load().map_err(|e| playback_err(crate::report(&e)))?;
        let pcm = alsa
            .open_s16_mono(device, SND_PCM_STREAM_PLAYBACK, rate)
            .map_err(|e| {
                playback_err(match e {
                    OpenError::Name => "device name contains NUL".into(),
                    OpenError::Open(why) => format!("cannot open `{device}` for playback: {why}"),
                    OpenError::Params(why) => {
                        format!("`{device}` cannot play {rate} Hz mono: {why}")
                    }
                })
            })?;
        Ok(AlsaSink {
            alsa,
            pcm,
            rate,
            device: device.to_string(),
            buf: Vec::new(),
        })
    }
}

impl AudioSink for AlsaSink {
    fn play(&mut self, audio: &Audio) -> Result<(), TtsError> {
        if audio.rate != self.rate {
            return Err(playback_err(format!(
                "`{}` was opened at {} Hz, the audio is {} Hz",
                self.device, self.rate, audio.rate
            )));
        }
        self.buf.clear();
        self.buf.extend(
            audio
                .samples
                .iter()
                .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16),
        );
        let mut done = 0;
        while done < self.buf.len() {
            let left = &self.buf[done..];
            // SAFETY: left holds left.len() frames of one S16 channel.
            let n = unsafe {
                (self.alsa.writei)(
                    self.pcm,
                    left.as_ptr() as *const c_void,
                    left.len() as c_ulong,
                )
            };
            if n >= 0 {
                done += n as usize;
                continue;
            }
            // An underrun (we fell behind) is recoverable.
            // SAFETY: valid handle; recover takes the negative code writei gave.
            let rc = unsafe { (self.alsa.recover)(self.pcm, n as c_int, 1) };
            if rc < 0 {
                return Err(playback_err(self.alsa.error(n as c_int)));
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        // SAFETY: valid handle; drop discards the queued frames, prepare
        // makes the device playable again.
        unsafe {
            (self.alsa.drop)(self.pcm);
            (self.alsa.prepare)(self.pcm);
        }
    }

    fn drain(&mut self) {
        // SAFETY: valid handle; drain leaves it stopped, prepare makes it
        // playable for the next answer.
        unsafe {
            (self.alsa.drain)(self.pcm);
            (self.alsa.prepare)(self.pcm);
        }
    }
}

impl Drop for AlsaSink {
    fn drop(&mut self) {
        // SAFETY: the handle was opened in open() and is closed once.
        unsafe { (self.alsa.close)(self.pcm) };
    }
}
