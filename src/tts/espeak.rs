//! Text to IPA phonemes with espeak-ng's library, as Piper itself does.
//!
//! `libespeak-ng.so.1` (Debian's and Raspberry Pi OS's `libespeak-ng1`) is
//! loaded at run time, like ALSA: the binary cross-compiles without an
//! espeak sysroot, and a box without it gets a clear error only when asked
//! to speak. Calls (espeak-ng's `speak_lib.h`): `espeak_Initialize`,
//! `espeak_SetVoiceByName` (or `espeak_SetVoiceByProperties` for a
//! language code), then `espeak_TextToPhonemes(&text,
//! espeakCHARS_UTF8, espeakPHONEMES_IPA)` until the text is consumed; each
//! call returns one clause's phonemes, words separated by spaces.
//!
//! espeak-ng keeps global state and is not thread-safe, so one process-wide
//! instance is used behind a mutex.
//!
//! Clause punctuation: the library drops it, but Piper voices were trained
//! with it (`,` `.` `?` `!` ... are in their phoneme maps and shape the
//! prosody), so the text is cut at clause punctuation here, each clause is
//! phonemized, and its punctuation is appended, as piper-phonemize does with
//! espeak's clause terminators.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use super::TtsError;

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_CHARS_UTF8: c_int = 1;
const ESPEAK_PHONEMES_IPA: c_int = 0x02;

type Initialize = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceByName = unsafe extern "C" fn(*const c_char) -> c_int;
/// speak_lib.h's `espeak_VOICE`, as `espeak_SetVoiceByProperties` reads it.
#[repr(C)]
struct VoiceSpec {
    name: *const c_char,
    languages: *const c_char,
    identifier: *const c_char,
    gender: u8,
    age: u8,
    variant: u8,
    xx1: u8,
    score: c_int,
    spare: *mut c_void,
}
type SetVoiceByProperties = unsafe extern "C" fn(*mut VoiceSpec) -> c_int;
type TextToPhonemes = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;
/// `t_espeak_callback`: samples, their count, events; 0 = go on.
type SynthCallback = unsafe extern "C" fn(*mut i16, c_int, *mut c_void) -> c_int;
type SetSynthCallback = unsafe extern "C" fn(SynthCallback);
type Synth = unsafe extern "C" fn(
    *const c_void,
    usize,
    c_uint,
    c_int,
    c_uint,
    c_uint,
    *mut c_uint,
    *mut c_void,
) -> c_int;
type SetParameter = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;

const POS_CHARACTER: c_int = 1;
const ESPEAK_RATE: c_int = 1;
/// espeak-ng's default speaking rate, words per minute.
pub const DEFAULT_WPM: f32 = 175.0;

struct Espeak {
    _lib: libloading::Library,
    set_voice: SetVoiceByName,
    set_voice_by_language: SetVoiceByProperties,
    to_phonemes: TextToPhonemes,
    synth: Synth,
    set_parameter: SetParameter,
    /// Samples per second of espeak's own audio (22050).
    rate: u32,
    voice: Option<String>,
}

// The function pointers stay valid while `_lib` is loaded; all use is behind
// the mutex below.
unsafe impl Send for Espeak {}

fn load() -> Result<Espeak, TtsError> {
    let unavailable = |e: libloading::Error| TtsError::Espeak {
        msg: "cannot load libespeak-ng.so.1 (install libespeak-ng1)".into(),
        source: Some(Box::new(e)),
    };
    // SAFETY: loading a system library whose initialisers are plain C.
    let lib = unsafe { libloading::Library::new("libespeak-ng.so.1") }.map_err(unavailable)?;
    // SAFETY: the symbols have the types of espeak-ng's speak_lib.h.
    let (init, set_voice, to_phonemes) = unsafe {
        (
            *lib.get::<Initialize>(b"espeak_Initialize\0")
                .map_err(unavailable)?,
            *lib.get::<SetVoiceByName>(b"espeak_SetVoiceByName\0")
                .map_err(unavailable)?,
            *lib.get::<TextToPhonemes>(b"espeak_TextToPhonemes\0")
                .map_err(unavailable)?,
        )
    };
    // SAFETY: as above.
    let (set_callback, synth, set_parameter, set_voice_by_language) = unsafe {
        (
            *lib.get::<SetSynthCallback>(b"espeak_SetSynthCallback\0")
                .map_err(unavailable)?,
            *lib.get::<Synth>(b"espeak_Synth\0").map_err(unavailable)?,
            *lib.get::<SetParameter>(b"espeak_SetParameter\0")
                .map_err(unavailable)?,
            *lib.get::<SetVoiceByProperties>(b"espeak_SetVoiceByProperties\0")
                .map_err(unavailable)?,
        )
    };
    // SAFETY: synchronous mode, default buffer, default data path, no options.
    let rate = unsafe { init(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
    if rate <= 0 {
        return Err(TtsError::Espeak {
            msg: "espeak_Initialize failed (is espeak-ng-data installed?)".into(),
            source: None,
        });
    }
    // SAFETY: a plain function pointer with the callback's C signature.
    unsafe { set_callback(collect) };
    Ok(Espeak {
        _lib: lib,
        set_voice,
        set_voice_by_language,
        to_phonemes,
        synth,
        set_parameter,
        rate: rate as u32,
        voice: None,
    })
}

fn instance() -> Result<&'static Mutex<Espeak>, TtsError> {
    static ESPEAK: OnceLock<Result<Mutex<Espeak>, String>> = OnceLock::new();
    ESPEAK
        .get_or_init(|| load().map(Mutex::new).map_err(|e| crate::report(&e)))
        .as_ref()
        .map_err(|msg| TtsError::Espeak {
            msg: msg.clone(),
            source: None,
        })
}

/// Whether `c` ends a clause (kept as a phoneme, as Piper keeps it).
fn is_clause_end(c: char) -> bool {
    matches!(c, '.' | ',' | '?' | '!' | ';' | ':')
}

/// Whether `c` ends a sentence (Piper synthesises sentence by sentence).
pub fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '?' | '!')
}

/// IPA phonemes of `text` in espeak-ng's `voice` (e.g. `en-us`), one string
/// per sentence, clause punctuation kept.
///
/// # Errors
/// `TtsError::Espeak` when the library cannot be loaded or does not know
/// the voice.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, TtsError> {
    let mut es = instance()?.lock().unwrap_or_else(|e| e.into_inner());
    select_voice(&mut es, voice)?;
    phonemize_with(&es, text)
}

fn select_voice(es: &mut Espeak, voice: &str) -> Result<(), TtsError> {
    if es.voice.as_deref() != Some(voice) {
        let name = CString::new(voice).map_err(|_| TtsError::Espeak {
            msg: format!("voice name {voice:?} holds a NUL"),
            source: None,
        })?;
        // A voice file's name (`en-us`, `en-gb-x-rp`), else a language code
        // (`en-gb`, `de`), which the library's by-name call refuses but
        // espeak-ng's `-v` takes: it asks by properties too.
        let mut spec = VoiceSpec {
            name: std::ptr::null(),
            languages: name.as_ptr(),
            identifier: std::ptr::null(),
            gender: 0,
            age: 0,
            variant: 0,
            xx1: 0,
            score: 0,
            spare: std::ptr::null_mut(),
        };
        // SAFETY: valid C strings and a struct of speak_lib.h's layout;
        // espeak copies what it needs.
        if unsafe { (es.set_voice)(name.as_ptr()) } != 0
            && unsafe { (es.set_voice_by_language)(&mut spec) } != 0
        {
            return Err(TtsError::Espeak {
                msg: format!("espeak-ng has no voice `{voice}`"),
                source: None,
            });
        }
        es.voice = Some(voice.to_string());
    }
    Ok(())
}

fn phonemize_with(es: &Espeak, text: &str) -> Result<Vec<String>, TtsError> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut clause = String::new();
    let flush = |clause: &mut String, current: &mut String, punct: Option<char>| {
        let ph = clause_phonemes(es, clause);
        clause.clear();
        if !ph.is_empty() || punct.is_some() {
            if !current.is_empty() && !ph.is_empty() {
                current.push(' ');
            }
            current.push_str(&ph);
            if let Some(p) = punct {
                current.push(p);
            }
        }
    };
    // Punctuation ends a clause only before white space or the end ("2.1",
    // "3:30", "1,000" stay inside theirs, for espeak to read); a run of it
    // ("...", "?!") ends one clause, with its first mark.
    let chars: Vec<char> = text.chars().filter(|&c| c != '\0').collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut j = i;
        while j < chars.len() && is_clause_end(chars[j]) {
            j += 1;
        }
        let ends = j > i && chars.get(j).is_none_or(|n| n.is_whitespace());
        if ends {
            flush(&mut clause, &mut current, Some(c));
            if is_sentence_end(c) {
                // A sentence of punctuation alone is not spoken.
                if current.chars().any(char::is_alphabetic) {
                    sentences.push(std::mem::take(&mut current));
                } else {
                    current.clear();
                }
            }
            i = j;
        } else {
            clause.push(c);
            i += 1;
        }
    }
    flush(&mut clause, &mut current, None);
    if current.chars().any(char::is_alphabetic) {
        sentences.push(current);
    }
    Ok(sentences)
}

/// One clause's phonemes (no punctuation in `text`).
fn clause_phonemes(es: &Espeak, text: &str) -> String {
    let Ok(c) = CString::new(text.trim()) else {
        return String::new();
    };
    let mut ptr = c.as_ptr() as *const c_void;
    let mut out = Vec::new();
    while !ptr.is_null() {
        // SAFETY: `ptr` points into `c` (NUL-terminated), which outlives the
        // loop; espeak advances it and sets it to NULL at the end, and the
        // returned string is valid until the next call.
        let ph = unsafe { (es.to_phonemes)(&mut ptr, ESPEAK_CHARS_UTF8, ESPEAK_PHONEMES_IPA) };
        if ph.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated string owned by espeak.
        let s = unsafe { CStr::from_ptr(ph) }
            .to_string_lossy()
            .trim()
            .to_string();
        if !s.is_empty() {
            out.push(s);
        }
    }
    out.join(" ")
}

thread_local! {
    /// Where `collect` puts espeak's samples: espeak's synchronous mode calls
    /// it on the thread that called `espeak_Synth`, under the mutex.
    static SAMPLES: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// espeak's synthesis callback: keep the samples, go on.
unsafe extern "C" fn collect(wav: *mut i16, n: c_int, _events: *mut c_void) -> c_int {
    if !wav.is_null() && n > 0 {
        // SAFETY: espeak passes `n` valid samples at `wav`.
        let s = unsafe { std::slice::from_raw_parts(wav, n as usize) };
        SAMPLES.with(|b| b.borrow_mut().extend_from_slice(s));
    }
    0
}

/// Speak `text` with espeak-ng's own synthesiser (formant, robotic, no
/// download): the fallback voice. `wpm` is the speaking rate.
///
/// # Errors
/// `TtsError::Espeak` when the library is missing, does not know `voice`,
/// or fails.
pub fn synthesize(text: &str, voice: &str, wpm: u32) -> Result<super::Audio, TtsError> {
    let mut es = instance()?.lock().unwrap_or_else(|e| e.into_inner());
    select_voice(&mut es, voice)?;
    let c = CString::new(text.replace('\0', " ")).expect("NULs replaced");
    SAMPLES.with(|b| b.borrow_mut().clear());
    // SAFETY: espeak's documented calls; the text is NUL-terminated and
    // outlives the synchronous call, which invokes `collect` on this thread.
    let rc = unsafe {
        (es.set_parameter)(ESPEAK_RATE, wpm.clamp(80, 450) as c_int, 0);
        (es.synth)(
            c.as_ptr() as *const c_void,
            c.as_bytes_with_nul().len(),
            0,
            POS_CHARACTER,
            0,
            ESPEAK_CHARS_UTF8 as c_uint,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(TtsError::Espeak {
            msg: format!("espeak_Synth failed ({rc})"),
            source: None,
        });
    }
    let samples = SAMPLES.with(|b| std::mem::take(&mut *b.borrow_mut()));
    Ok(super::Audio {
        rate: es.rate,
        samples: samples.iter().map(|&s| f32::from(s) / 32768.0).collect(),
    })
}

/// espeak-ng's own sample rate (22050 Hz).
///
/// # Errors
/// `TtsError::Espeak` when the library cannot be loaded.
pub fn sample_rate() -> Result<u32, TtsError> {
    Ok(instance()?.lock().unwrap_or_else(|e| e.into_inner()).rate)
}
