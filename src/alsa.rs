//! ALSA's `libasound.so.2`, loaded at run time: the PCM calls that capture
//! (the microphone) and playback (the speaker) share. Loading at run time
//! lets the binary cross-compile for every board without an ALSA sysroot,
//! and a box without ALSA gets a clear error only when it asks for audio.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CStr, CString};

/// libasound could not be loaded, or lacks a function.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct AlsaError {
    pub what: &'static str,
    #[source]
    pub source: libloading::Error,
}

/// An open PCM handle (`snd_pcm_t *`).
pub type PcmPtr = *mut c_void;

/// libasound's PCM and hint functions, looked up by name.
pub struct Alsa {
    _lib: libloading::Library,
    pub open: unsafe extern "C" fn(*mut PcmPtr, *const c_char, c_int, c_int) -> c_int,
    pub set_params:
        unsafe extern "C" fn(PcmPtr, c_int, c_int, c_uint, c_uint, c_int, c_uint) -> c_int,
    pub readi: unsafe extern "C" fn(PcmPtr, *mut c_void, c_ulong) -> c_long,
    pub recover: unsafe extern "C" fn(PcmPtr, c_int, c_int) -> c_int,
    pub writei: unsafe extern "C" fn(PcmPtr, *const c_void, c_ulong) -> c_long,
    pub drain: unsafe extern "C" fn(PcmPtr) -> c_int,
    pub drop: unsafe extern "C" fn(PcmPtr) -> c_int,
    pub prepare: unsafe extern "C" fn(PcmPtr) -> c_int,
    pub close: unsafe extern "C" fn(PcmPtr) -> c_int,
    pub strerror: unsafe extern "C" fn(c_int) -> *const c_char,
    pub name_hint: unsafe extern "C" fn(c_int, *const c_char, *mut *mut *mut c_void) -> c_int,
    pub get_hint: unsafe extern "C" fn(*const c_void, *const c_char) -> *mut c_char,
    pub free_hint: unsafe extern "C" fn(*mut *mut c_void) -> c_int,
}

pub const SND_PCM_STREAM_PLAYBACK: c_int = 0;
pub const SND_PCM_STREAM_CAPTURE: c_int = 1;
pub const SND_PCM_FORMAT_S16_LE: c_int = 2;
pub const SND_PCM_ACCESS_RW_INTERLEAVED: c_int = 3;

impl Alsa {
    /// Load libasound.so.2 and look up its functions.
    ///
    /// # Errors
    /// `AlsaError` naming what is missing.
    pub fn load() -> Result<Alsa, AlsaError> {
        // SAFETY: libasound's initialisers have no preconditions; the symbols
        // are looked up with their documented C signatures below.
        unsafe {
            let lib = libloading::Library::new("libasound.so.2").map_err(|source| AlsaError {
                what: "cannot load ALSA (libasound.so.2; install the libasound2 package)",
                source,
            })?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|source| AlsaError {
                        what: "libasound.so.2 lacks a symbol",
                        source,
                    })?
                };
            }
            Ok(Alsa {
                open: sym!(b"snd_pcm_open\0"),
                set_params: sym!(b"snd_pcm_set_params\0"),
                readi: sym!(b"snd_pcm_readi\0"),
                recover: sym!(b"snd_pcm_recover\0"),
                writei: sym!(b"snd_pcm_writei\0"),
                drain: sym!(b"snd_pcm_drain\0"),
                drop: sym!(b"snd_pcm_drop\0"),
                prepare: sym!(b"snd_pcm_prepare\0"),
                close: sym!(b"snd_pcm_close\0"),
                strerror: sym!(b"snd_strerror\0"),
                name_hint: sym!(b"snd_device_name_hint\0"),
                get_hint: sym!(b"snd_device_name_get_hint\0"),
                free_hint: sym!(b"snd_device_name_free_hint\0"),
                _lib: lib,
            })
        }
    }

    /// ALSA's text for an error code.
    pub fn error(&self, code: c_int) -> String {
        // SAFETY: snd_strerror returns a static string for any code.
        unsafe { CStr::from_ptr((self.strerror)(code)) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Why `Alsa::open_s16_mono` failed, with ALSA's own words.
#[derive(Debug)]
pub enum OpenError {
    /// The device name holds a NUL.
    Name,
    /// `snd_pcm_open` refused the device.
    Open(String),
    /// The device cannot take 16-bit mono at the rate asked.
    Params(String),
}

impl Alsa {
    /// Open `device` (`default`, `plughw:1,0`, ...) for `stream`
    /// (`SND_PCM_STREAM_CAPTURE` or `_PLAYBACK`) as interleaved 16-bit mono
    /// at `rate` Hz through ALSA's plug layer (soft resampling on), with 100
    /// ms of buffer. The caller closes the handle (`close`).
    ///
    /// # Errors
    /// `OpenError` naming which step failed.
    pub fn open_s16_mono(
        &self,
        device: &str,
        stream: c_int,
        rate: u32,
    ) -> Result<PcmPtr, OpenError> {
        let name = CString::new(device).map_err(|_| OpenError::Name)?;
        let mut pcm: PcmPtr = std::ptr::null_mut();
        // SAFETY: pcm receives a handle on success.
        let rc = unsafe { (self.open)(&mut pcm, name.as_ptr(), stream, 0) };
        if rc < 0 {
            return Err(OpenError::Open(self.error(rc)));
        }
        // SAFETY: pcm is a valid open handle.
        let rc = unsafe {
            (self.set_params)(
                pcm,
                SND_PCM_FORMAT_S16_LE,
                SND_PCM_ACCESS_RW_INTERLEAVED,
                1,
                rate,
                1,
                100_000,
            )
        };
        if rc < 0 {
            // SAFETY: closing the handle opened above.
            unsafe { (self.close)(pcm) };
            return Err(OpenError::Params(self.error(rc)));
        }
        Ok(pcm)
    }
}
