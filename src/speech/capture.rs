//! Where utterance audio comes from: the `AudioSource` seam.
//!
//! `AlsaSource` captures from a microphone through ALSA's `libasound.so.2`,
//! loaded at run time (`crate::alsa`): the binary then cross-compiles for
//! every board without an ALSA sysroot, and a box without ALSA gets a clear
//! error only when it asks for a microphone. ALSA's `plug` layer converts the device's native format
//! to 16 kHz mono S16, so no resampling happens here. `WavSource` plays a file
//! through the same seam for `listen --wav` and the tests.

use std::ffi::{c_int, c_ulong, c_void, CStr, CString};

use super::{Pcm16k, SpeechError, SAMPLE_RATE};

/// A stream of 16 kHz mono samples.
pub trait AudioSource {
    /// Fill `buf`; returns how many samples were written, 0 at the end.
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, SpeechError>;
}

/// Audio from memory (a WAV file already read), in chunks: as fast as it is
/// read, or (`paced`) no faster than real time, as a microphone delivers it.
pub struct WavSource {
    pcm: Pcm16k,
    pos: usize,
    paced: Option<std::time::Instant>,
}

impl WavSource {
    pub fn new(pcm: Pcm16k) -> WavSource {
        WavSource {
            pcm,
            pos: 0,
            paced: None,
        }
    }

    /// Deliver the samples at real-time speed (`listen --wav --speak`: a
    /// question must not arrive while the last answer is still being
    /// spoken, unless it would have with a microphone).
    pub fn paced(mut self) -> WavSource {
        self.paced = Some(std::time::Instant::now());
        self
    }
}

impl AudioSource for WavSource {
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, SpeechError> {
        if let Some(t0) = self.paced {
            let due = std::time::Duration::from_secs_f64(self.pos as f64 / SAMPLE_RATE as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = buf.len().min(self.pcm.0.len() - self.pos);
        buf[..n].copy_from_slice(&self.pcm.0[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

use crate::alsa::{Alsa, OpenError, PcmPtr, SND_PCM_STREAM_CAPTURE};

extern "C" {
    fn free(p: *mut c_void);
}

/// One capture device as ALSA describes it.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub description: String,
}

/// Capture devices (`ferrite listen --list-devices`).
pub fn list_devices() -> Result<Vec<Device>, SpeechError> {
    let alsa = Alsa::load().map_err(SpeechError::Alsa)?;
    let mut hints: *mut *mut c_void = std::ptr::null_mut();
    let iface = CString::new("pcm").expect("no NUL");
    // SAFETY: documented use of the hint API; every string it returns is
    // freed with free(), the array with snd_device_name_free_hint.
    unsafe {
        let rc = (alsa.name_hint)(-1, iface.as_ptr(), &mut hints);
        if rc < 0 {
            return Err(SpeechError::Capture(alsa.error(rc)));
        }
        let take = |h: *const c_void, id: &str| -> Option<String> {
            let id = CString::new(id).expect("no NUL");
            let p = (alsa.get_hint)(h, id.as_ptr());
            if p.is_null() {
                return None;
            }
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            free(p as *mut c_void);
            Some(s)
        };
        let mut out = Vec::new();
        let mut i = 0;
        while !(*hints.add(i)).is_null() {
            let h = *hints.add(i);
            i += 1;
            // IOID is absent for devices that do both directions.
            if take(h, "IOID").is_some_and(|d| d == "Output") {
                continue;
            }
            if let Some(name) = take(h, "NAME") {
                let description = take(h, "DESC").unwrap_or_default().replace('\n', " — ");
                out.push(Device { name, description });
            }
        }
        (alsa.free_hint)(hints);
        Ok(out)
    }
}

/// A microphone through ALSA, 16 kHz mono.
pub struct AlsaSource {
    alsa: Alsa,
    pcm: PcmPtr,
    buf: Vec<i16>,
}

// SAFETY: the PCM handle is used from one thread at a time (&mut self).
unsafe impl Send for AlsaSource {}

impl AlsaSource {
    /// Open `device` (`default`, `plughw:1,0`, ...) for capture.
    pub fn open(device: &str) -> Result<AlsaSource, SpeechError> {
        let alsa = Alsa::load().map_err(SpeechError::Alsa)?;
        let pcm = alsa
            .open_s16_mono(device, SND_PCM_STREAM_CAPTURE, SAMPLE_RATE)
            .map_err(|e| {
                SpeechError::Capture(match e {
                    OpenError::Name => "device name contains NUL".into(),
                    OpenError::Open(why) => format!(
                        "cannot open `{device}`: {why}; `ferrite listen --list-devices` shows the devices"
                    ),
                    OpenError::Params(why) => format!("`{device}` cannot record 16 kHz mono: {why}"),
                })
            })?;
        Ok(AlsaSource {
            alsa,
            pcm,
            buf: Vec::new(),
        })
    }
}

impl AudioSource for AlsaSource {
    fn read(&mut self, out: &mut [f32]) -> Result<usize, SpeechError> {
        self.buf.resize(out.len(), 0);
        loop {
            // SAFETY: buf holds out.len() frames of one S16 channel.
            let n = unsafe {
                (self.alsa.readi)(
                    self.pcm,
                    self.buf.as_mut_ptr() as *mut c_void,
                    out.len() as c_ulong,
                )
            };
            if n >= 0 {
                let n = n as usize;
                for (o, s) in out.iter_mut().zip(&self.buf[..n]) {
                    *o = *s as f32 / 32768.0;
                }
                return Ok(n);
            }
            // An overrun (the loop fell behind) is recoverable; say so and go on.
            // SAFETY: valid handle; recover takes the negative code readi gave.
            let rc = unsafe { (self.alsa.recover)(self.pcm, n as c_int, 1) };
            if rc < 0 {
                return Err(SpeechError::Capture(self.alsa.error(n as c_int)));
            }
            tracing::warn!(error = %self.alsa.error(n as c_int), "capture overrun, recovered");
        }
    }
}

impl Drop for AlsaSource {
    fn drop(&mut self) {
        // SAFETY: the handle was opened in open() and is closed once.
        unsafe { (self.alsa.close)(self.pcm) };
    }
}
