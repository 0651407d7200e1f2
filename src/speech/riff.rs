//! The RIFF/WAVE container, walked as the common tools walk it, so that the
//! sample decoder (hound) only ever sees a plain, exactly-sized file.
//!
//! What real files hold and hound alone refuses or misreads (Microsoft's
//! RIFF spec, 1991, and EBU Tech 3285 for `bext`):
//! - chunks other than `fmt `/`data` before the samples (`LIST`, `fact`,
//!   `bext`, `JUNK`, `cue `, ...), skipped;
//! - an odd-sized chunk is followed by one pad byte; a writer that forgot the
//!   pad is tolerated when the next chunk id lines up only without it;
//! - streamed sizes: a writer that cannot seek back (ffmpeg `-f wav -`, sox
//!   to a pipe, arecord) leaves a placeholder in the RIFF and `data` sizes
//!   (0xFFFFFFFF, 0x7FFFF000, 0); the samples then run to the end of the file,
//!   cut to whole frames, as sox and Python's `wave` read them.
//!
//! Strict where a file is really broken: no `RIFF`/`WAVE` header, no `fmt `
//! before `data`, a chunk that runs past the end of the file, or a declared
//! (non-placeholder) `data` size larger than the file (a cut-off file).

use std::ops::Range;

/// Where a WAV file's format and samples are, within its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The `fmt ` chunk's body (16, 18 or 40 bytes for WAVE_FORMAT_EXTENSIBLE).
    pub fmt: Range<usize>,
    /// The sample bytes, whole frames only.
    pub data: Range<usize>,
    /// The data size was a streaming placeholder: the samples run to the end.
    pub streamed: bool,
}

/// Why a file is not a WAV file we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RiffError {
    #[error("not a readable WAV file: no RIFF/WAVE header")]
    NotWave,
    #[error("not a readable WAV file: no `fmt ` chunk before the `data` chunk")]
    NoFormat,
    #[error("not a readable WAV file: the `fmt ` chunk is {0} bytes (at least 16)")]
    ShortFormat(usize),
    #[error("not a readable WAV file: no `data` chunk")]
    NoData,
    #[error("truncated: chunk `{id}` at byte {at} declares {len} bytes, the file ends {left} bytes later")]
    ChunkPastEnd {
        id: String,
        at: usize,
        len: u64,
        left: usize,
    },
    #[error("truncated: the header promises {promised} bytes of samples, the file holds {held}")]
    DataPastEnd { promised: u64, held: usize },
}

/// A size a writer that cannot seek leaves in place of the real one.
fn is_placeholder(len: u32) -> bool {
    len == 0 || len >= 0x7FFF_0000
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Whether 4 bytes look like a chunk id (printable ASCII, as every
/// registered id is).
fn id_like(b: &[u8]) -> bool {
    b.len() >= 4 && b[..4].iter().all(|c| (0x20..0x7f).contains(c))
}

/// Walk `bytes` (a whole WAV file) to its `fmt ` and `data` chunks.
///
/// # Errors
/// `RiffError` for what the module doc calls really broken.
pub fn walk(bytes: &[u8]) -> Result<Layout, RiffError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(RiffError::NotWave);
    }
    // The RIFF size is not trusted: placeholders and trailing bytes are both
    // common; chunks are walked to the end of the file.
    let mut at = 12;
    let mut fmt = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32_at(bytes, at + 4);
        let body = at + 8;
        let left = bytes.len() - body;
        if id == b"data" {
            let fmt: Range<usize> = fmt.ok_or(RiffError::NoFormat)?;
            let block = block_align(&bytes[fmt.clone()]);
            let (end, streamed) = if len != 0 && len as usize <= left {
                (body + len as usize, false)
            } else if is_placeholder(len) {
                (bytes.len(), true)
            } else {
                return Err(RiffError::DataPastEnd {
                    promised: len.into(),
                    held: left,
                });
            };
            let whole = (end - body) / block * block;
            return Ok(Layout {
                fmt,
                data: body..body + whole,
                streamed,
            });
        }
        if len as usize > left {
            return Err(RiffError::ChunkPastEnd {
                id: String::from_utf8_lossy(id).into_owned(),
                at,
                len: len.into(),
                left,
            });
        }
        if id == b"fmt " {
            if len < 16 {
                return Err(RiffError::ShortFormat(len as usize));
            }
            fmt = Some(body..body + len as usize);
        }
        at = body + len as usize;
        if len % 2 == 1 {
            // The pad byte, unless the writer left it out and the next id
            // lines up only without it.
            let padded_ok = bytes.get(at + 1..).is_some_and(id_like);
            let unpadded_ok = bytes.get(at..).is_some_and(id_like);
            if padded_ok || !unpadded_ok {
                at += 1;
            }
        }
    }
    Err(if fmt.is_none() {
        RiffError::NoFormat
    } else {
        RiffError::NoData
    })
}

/// Bytes per frame from a `fmt ` body (nBlockAlign; at least 1).
fn block_align(fmt: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([fmt[12], fmt[13]])).max(1)
}

/// A canonical 44-byte-plus header for `fmt` and `data_len` bytes of
/// samples: `RIFF`, `WAVE`, the `fmt ` chunk as it was, `data` and its exact
/// size. Sizes are bounded by the caller (a file held in memory).
pub fn canonical_header(fmt: &[u8], data_len: usize) -> Vec<u8> {
    let fmt_len = fmt.len() + fmt.len() % 2;
    let riff_len = 4 + 8 + fmt_len + 8 + data_len;
    let mut h = Vec::with_capacity(20 + fmt_len + 8);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(riff_len.min(u32::MAX as usize) as u32).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    h.extend_from_slice(fmt);
    if fmt.len() % 2 == 1 {
        h.push(0);
    }
    h.extend_from_slice(b"data");
    h.extend_from_slice(&(data_len.min(u32::MAX as usize) as u32).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt16() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&1u16.to_le_bytes()); // PCM
        f.extend_from_slice(&1u16.to_le_bytes()); // mono
        f.extend_from_slice(&16000u32.to_le_bytes());
        f.extend_from_slice(&32000u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes()); // block align
        f.extend_from_slice(&16u16.to_le_bytes());
        f
    }

    fn chunk(id: &[u8; 4], len: u32, body: &[u8], pad: bool) -> Vec<u8> {
        let mut c = id.to_vec();
        c.extend_from_slice(&len.to_le_bytes());
        c.extend_from_slice(body);
        if pad && body.len() % 2 == 1 {
            c.push(0);
        }
        c
    }

    fn file(riff_len: u32, chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut f = b"RIFF".to_vec();
        f.extend_from_slice(&riff_len.to_le_bytes());
        f.extend_from_slice(b"WAVE");
        for c in chunks {
            f.extend_from_slice(c);
        }
        f
    }

    #[test]
    fn streamed_sizes_run_to_the_end_in_whole_frames() {
        for placeholder in [0xFFFF_FFFF, 0x7FFF_F000, 0] {
            let f = file(
                placeholder,
                &[
                    chunk(b"fmt ", 16, &fmt16(), true),
                    chunk(b"data", placeholder, &[1, 2, 3, 4, 5], false),
                ],
            );
            let l = walk(&f).unwrap();
            assert!(l.streamed);
            assert_eq!(l.data.len(), 4, "{placeholder:#x}");
        }
    }

    #[test]
    fn odd_chunks_are_padded_and_a_missing_pad_is_tolerated() {
        for pad in [true, false] {
            let f = file(
                100,
                &[
                    chunk(b"LIST", 5, b"INFOx", pad),
                    chunk(b"fmt ", 16, &fmt16(), true),
                    chunk(b"bext", 3, b"abc", pad),
                    chunk(b"data", 4, &[1, 2, 3, 4], true),
                ],
            );
            let l = walk(&f).unwrap();
            assert!(!l.streamed);
            assert_eq!(&f[l.data.clone()], &[1, 2, 3, 4], "pad {pad}");
        }
    }

    #[test]
    fn really_broken_files_stay_errors() {
        let cut = file(
            100,
            &[
                chunk(b"fmt ", 16, &fmt16(), true),
                chunk(b"data", 400, &[0; 10], true),
            ],
        );
        assert!(matches!(
            walk(&cut),
            Err(RiffError::DataPastEnd {
                promised: 400,
                held: 10
            })
        ));
        let no_fmt = file(100, &[chunk(b"data", 2, &[0; 2], true)]);
        assert_eq!(walk(&no_fmt), Err(RiffError::NoFormat));
        let long_list = file(100, &[chunk(b"LIST", 1000, &[0; 8], true)]);
        assert!(matches!(
            walk(&long_list),
            Err(RiffError::ChunkPastEnd { .. })
        ));
        assert_eq!(walk(b"RIFX\0\0\0\0WAVE"), Err(RiffError::NotWave));
        let no_data = file(100, &[chunk(b"fmt ", 16, &fmt16(), true)]);
        assert_eq!(walk(&no_data), Err(RiffError::NoData));
    }
}
