//! WAV files as real tools write them (issue #15): streamed sizes (sox to a
//! pipe, ffmpeg's `-f wav -` placeholders), extra and odd-sized chunks
//! (`LIST`, `fact`, `bext`), WAVE_FORMAT_EXTENSIBLE. Each must read to the
//! same samples as the plain file; the reference reading is sox's own
//! (`sox FILE -t f32 -`), which is what the issue names as the bar.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferrite::speech::wav;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wav-files");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The samples sox reads from `file`, as 32-bit floats.
fn sox_samples(file: &Path) -> Vec<f32> {
    let out = Command::new("sox")
        .arg(file)
        .args(["-t", "f32", "-"])
        .stderr(Stdio::null())
        .output()
        .expect("sox is needed (bash .ci/deps installs it)");
    assert!(out.status.success(), "sox could not read {file:?}");
    out.stdout
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A 16-bit mono espeak-ng sentence at 16 kHz, as a plain WAV (made once:
/// the tests run in parallel).
fn plain() -> (PathBuf, Vec<u8>) {
    static PLAIN: std::sync::OnceLock<(PathBuf, Vec<u8>)> = std::sync::OnceLock::new();
    PLAIN.get_or_init(make_plain).clone()
}

fn make_plain() -> (PathBuf, Vec<u8>) {
    let raw = scratch("espeak.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(&raw)
        .arg("Turn on the kitchen light.")
        .status()
        .expect("espeak-ng is needed (bash .ci/deps installs it)");
    assert!(st.success());
    let p = scratch("plain.wav");
    let st = Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-b", "16"])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

/// Offsets of the `fmt ` chunk and the `data` chunk header in a plain file.
fn chunks(b: &[u8]) -> (usize, usize) {
    let fmt = b.windows(4).position(|w| w == b"fmt ").unwrap();
    let data = b.windows(4).position(|w| w == b"data").unwrap();
    (fmt, data)
}

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut c = id.to_vec();
    c.extend_from_slice(&(body.len() as u32).to_le_bytes());
    c.extend_from_slice(body);
    if body.len() % 2 == 1 {
        c.push(0);
    }
    c
}

fn read(p: &Path) -> Vec<f32> {
    wav::read(p)
        .unwrap_or_else(|e| panic!("{p:?}: {}", ferrite::report(&e)))
        .samples
}

fn assert_same(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: sample count");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "{name}: samples differ by up to {worst}");
}

#[test]
fn files_the_common_tools_write_read_as_sox_reads_them() {
    let (plain_path, b) = plain();
    let want = read(&plain_path);
    assert_same("plain vs sox", &want, &sox_samples(&plain_path));
    let (fmt_at, data_at) = chunks(&b);
    let samples = &b[data_at + 8..];
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();

    // ffmpeg to a pipe: RIFF and data sizes 0xFFFFFFFF.
    let mut ff = b.clone();
    ff[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    ff[data_at + 4..data_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    variants.push(("ffmpeg-streamed", ff));

    // Extra chunks before the samples, one odd-sized (its pad byte follows).
    let mut extra = b[..12].to_vec();
    extra.extend(chunk(b"LIST", b"INFOISFT\x05\0\0\0sox!\0"));
    extra.extend_from_slice(&b[fmt_at..data_at]);
    extra.extend(chunk(b"fact", &((samples.len() / 2) as u32).to_le_bytes()));
    extra.extend(chunk(b"bext", &[b'x'; 603]));
    extra.extend_from_slice(&b[data_at..]);
    let riff = (extra.len() - 8) as u32;
    extra[4..8].copy_from_slice(&riff.to_le_bytes());
    variants.push(("list-fact-bext", extra));

    // Streamed with a zero data size and a trailing half sample (a pipe cut
    // mid-frame): whole frames are kept. Here ferrite is more lenient than
    // sox, which reads a zero size as no samples; bytes that follow a zero
    // size are a streaming writer's samples, not nothing.
    let mut cut = b.clone();
    cut[data_at + 4..data_at + 8].copy_from_slice(&0u32.to_le_bytes());
    cut.push(0x7f);
    variants.push(("zero-size-odd-tail", cut));

    for (name, bytes) in &variants {
        let p = scratch(&format!("{name}.wav"));
        std::fs::write(&p, bytes).unwrap();
        let got = read(&p);
        assert_same(name, &got, &want);
        if *name != "zero-size-odd-tail" {
            assert_same(&format!("{name} (sox)"), &sox_samples(&p), &want);
        }
    }

    // sox itself writing to a pipe what it cannot size in advance (a
    // synthesised tone): data size 0x7FFFF000.
    let piped = scratch("sox-pipe.wav");
    let out = Command::new("sox")
        .args(["-n", "-r", "16000", "-b", "16", "-t", "wav", "-"])
        .args(["synth", "0.5", "sine", "440"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_, d) = chunks(&out.stdout);
    assert_eq!(
        &out.stdout[d + 4..d + 8],
        &0x7FFF_F000u32.to_le_bytes(),
        "sox's pipe placeholder"
    );
    std::fs::write(&piped, &out.stdout).unwrap();
    let tone = read(&piped);
    assert_eq!(tone.len(), 8000);
    assert_same("sox-pipe", &tone, &sox_samples(&piped));

    // WAVE_FORMAT_EXTENSIBLE: sox writes it for 24-bit and for 3 channels.
    let wide = scratch("extensible-24bit-3ch.wav");
    let st = Command::new("sox")
        .arg(&plain_path)
        .args(["-b", "24", "-c", "3"])
        .arg(&wide)
        .status()
        .unwrap();
    assert!(st.success());
    let wb = std::fs::read(&wide).unwrap();
    let (wfmt, _) = chunks(&wb);
    assert_eq!(
        u16::from_le_bytes([wb[wfmt + 8], wb[wfmt + 9]]),
        0xFFFE,
        "extensible"
    );
    let w = wav::read(&wide).unwrap();
    assert_eq!(w.channels, 3);
    let first: Vec<f32> = w.samples.iter().step_by(3).copied().collect();
    assert_same("extensible", &first, &want);
    assert_same("extensible (sox)", &w.samples, &sox_samples(&wide));
}

#[test]
fn broken_files_still_say_what_is_wrong() {
    let (_, b) = plain();
    let (_, data_at) = chunks(&b);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut-in-half", b[..b.len() / 2].to_vec(), "truncated"),
        (
            "no-fmt",
            {
                let mut v = b[..12].to_vec();
                v.extend_from_slice(&b[data_at..]);
                v
            },
            "no `fmt ` chunk",
        ),
        (
            "not-riff",
            b"RIFX....WAVEfmt ".to_vec(),
            "not a readable WAV file",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = scratch(&format!("broken-{name}.wav"));
        std::fs::write(&p, &bytes).unwrap();
        let e = match wav::read(&p) {
            Ok(_) => panic!("{name}: read"),
            Err(e) => ferrite::report(&e),
        };
        assert!(e.contains(want), "{name}: {e}");
    }
}
