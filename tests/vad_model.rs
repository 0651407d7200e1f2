//! The learned voice detector (issue #15): Silero VAD converted from the
//! `silero-vad` package and run by whisper.cpp's VAD must agree with the
//! package's own ONNX model run by ONNX Runtime (tests/ref/silero_onnx.py),
//! and must keep non-speech sound of every kind away from whisper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::common::sox;

use ferrite::speech::neural_vad::{SileroVad, THRESHOLD};
use ferrite::speech::{wav, Pcm16k};

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vad-model");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn silero() -> std::sync::MutexGuard<'static, SileroVad> {
    static VAD: OnceLock<Mutex<SileroVad>> = OnceLock::new();
    VAD.get_or_init(|| Mutex::new(SileroVad::load(crate::common::silero_path(), 1).unwrap()))
        .lock()
        .unwrap()
}

/// The package's ONNX model (the reference), unpacked once.
fn onnx_model() -> PathBuf {
    static ONNX: OnceLock<PathBuf> = OnceLock::new();
    ONNX.get_or_init(|| {
        let dir = scratch("wheel");
        let onnx = dir.join("silero_vad/data/silero_vad_16k_op15.onnx");
        if !onnx.is_file() {
            let st = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "silero-vad==6.2.3",
                    "-d",
                ])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "pip download silero-vad");
            let st = Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(dir.join("silero_vad-6.2.3-py3-none-any.whl"))
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
        onnx
    })
    .clone()
}

/// ONNX Runtime's probabilities for `pcm`, one per 512-sample window.
fn onnx_probabilities(pcm: &Pcm16k) -> Vec<f32> {
    let bytes: Vec<u8> = pcm.0.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::common::python_ref("silero_onnx.py", &onnx_model(), &bytes, "onnxruntime")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn espeak(text: &str, voice: &str, rate: u32, name: &str) -> Pcm16k {
    let p = scratch(name);
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &rate.to_string(), "-w"])
        .arg(&p)
        .arg(text)
        .status()
        .expect("espeak-ng (bash .ci/deps installs it)");
    assert!(st.success());
    wav::read(&p).unwrap().to_pcm16k()
}

#[test]
fn whisper_cpp_runs_silero_as_onnx_runtime_does() {
    let mut pcm = Pcm16k(vec![0.0; 8000]);
    pcm.0.extend(
        espeak(
            "What is the capital of France? Turn on the kitchen light.",
            "en-us",
            150,
            "agree-1.wav",
        )
        .0,
    );
    pcm.0.extend(vec![0.0; 16000]);
    pcm.0
        .extend(espeak("Set a timer for ten minutes.", "en-gb", 120, "agree-2.wav").0);
    let ours = silero().probabilities(&pcm).unwrap();
    let theirs = onnx_probabilities(&pcm);
    assert_eq!(ours.len(), theirs.len());
    let n = ours.len() as f32;
    let mean_abs = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / n;
    let agree = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| (**a >= THRESHOLD) == (**b >= THRESHOLD))
        .count() as f32
        / n;
    eprintln!(
        "silero: {} windows, mean |p - p_onnx| = {mean_abs:.4}, decisions agree on {:.1}%",
        ours.len(),
        100.0 * agree
    );
    assert!(mean_abs < 0.05, "mean |p - p_onnx| = {mean_abs}");
    assert!(agree > 0.95, "decisions agree on {agree}");
}

/// Five seconds of each kind of non-speech sound, made by sox: noise
/// colours, a tone, a plucked chord (music), clicks, and a fan (a hum in
/// brown noise). Whisper alone hears "You" in most of them.
fn non_speech() -> Vec<(&'static str, PathBuf)> {
    let kinds: [(&str, &[&str]); 7] = [
        ("brown", &["synth", "5", "brownnoise", "vol", "0.3"]),
        ("pink", &["synth", "5", "pinknoise", "vol", "0.3"]),
        ("white", &["synth", "5", "whitenoise", "vol", "0.3"]),
        ("tone", &["synth", "5", "sine", "440", "vol", "0.3"]),
        (
            "chord",
            &[
                "synth", "5", "pluck", "C4", "pluck", "E4", "pluck", "G4", "remix", "-", "vol",
                "0.5",
            ],
        ),
        ("clicks", &["synth", "5", "square", "2", "vol", "0.3"]),
        (
            "fan",
            &[
                "synth",
                "5",
                "brownnoise",
                "sine",
                "120",
                "remix",
                "-",
                "vol",
                "0.3",
            ],
        ),
    ];
    kinds
        .iter()
        .map(|(name, effect)| {
            let p = scratch(&format!("nonspeech-{name}.wav"));
            let mut args = vec![
                "-n",
                "-r",
                "16000",
                "-b",
                "16",
                "-c",
                "1",
                p.to_str().unwrap(),
            ];
            args.extend_from_slice(effect);
            sox(&args);
            (*name, p)
        })
        .collect()
}

/// The transcript; an empty one must come with stderr's note saying so.
fn transcribe(file: &Path, vad_model: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = crate::common::ferrite(
        home.path(),
        &[
            "transcribe",
            file.to_str().unwrap(),
            "--whisper",
            crate::common::whisper_path("whisper-tiny.en")
                .to_str()
                .unwrap(),
            "--vad-model",
            vad_model,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.is_empty(), err.contains("no speech in"), "{err}");
    text
}

#[test]
fn non_speech_sound_of_every_kind_transcribes_to_nothing() {
    // Whisper alone hears "You" in most of these (brown, tone, chord,
    // clicks); benches/vad.sh reports it. With the gate: nothing.
    let silero = crate::common::silero_path().to_str().unwrap();
    for (name, file) in non_speech() {
        let text = transcribe(&file, silero);
        assert_eq!(text, "", "{name}: words invented from non-speech");
    }
}

#[test]
fn speech_in_noise_still_passes_the_gate() {
    // A question mixed into brown noise at about 10 dB SNR is still heard.
    let q = scratch("snr-q.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-w"])
        .arg(&q)
        .arg("What is the capital of Japan?")
        .status()
        .unwrap();
    assert!(st.success());
    let q16 = scratch("snr-q16.wav");
    sox(&[
        q.to_str().unwrap(),
        "-r",
        "16000",
        "-b",
        "16",
        q16.to_str().unwrap(),
        "pad",
        "0.5",
        "0.5",
    ]);
    let noise = scratch("snr-noise.wav");
    let secs = wav::read(&q16).unwrap().seconds().to_string();
    sox(&[
        "-n",
        "-r",
        "16000",
        "-b",
        "16",
        "-c",
        "1",
        noise.to_str().unwrap(),
        "synth",
        &secs,
        "brownnoise",
        "vol",
        "0.05",
    ]);
    let mixed = scratch("snr-mixed.wav");
    sox(&[
        "-m",
        q16.to_str().unwrap(),
        noise.to_str().unwrap(),
        mixed.to_str().unwrap(),
    ]);
    let text = transcribe(&mixed, crate::common::silero_path().to_str().unwrap());
    assert!(text.contains("capital of Japan"), "{text:?}");
}

#[test]
fn a_cut_or_foreign_vad_model_is_a_clear_error() {
    let full = std::fs::read(crate::common::silero_path()).unwrap();
    for (name, bytes, want) in [
        (
            "cut",
            full[..full.len() * 2 / 3].to_vec(),
            "runs past the end",
        ),
        ("header", full[..30].to_vec(), "truncated"),
        (
            "foreign",
            b"lmgg\x0a\0\0\0whisper-xx".to_vec(),
            "not silero-16k",
        ),
    ] {
        let p = scratch(&format!("bad-{name}.bin"));
        std::fs::write(&p, bytes).unwrap();
        let e = match SileroVad::load(&p, 1) {
            Ok(_) => panic!("{name}: loaded"),
            Err(e) => ferrite::report(&e),
        };
        assert!(e.contains(want), "{name}: {e}");
    }
}

/// A 16 kHz mono clip made by sox from `effect` (`synth ...`).
fn sox_clip(name: &str, secs: f32, effect: &[&str]) -> Vec<f32> {
    let p = scratch(&format!("set-{name}.wav"));
    let s = secs.to_string();
    // -R: repeatable noise, so the figures do not move between runs.
    let mut args = vec![
        "-R",
        "-n",
        "-r",
        "16000",
        "-b",
        "16",
        "-c",
        "1",
        p.to_str().unwrap(),
        "synth",
        &s,
    ];
    args.extend_from_slice(effect);
    sox(&args);
    wav::read(&p).unwrap().samples
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Frames (20 ms) of `n` samples covered by `parts`, located in `whole`.
fn covered(whole: &[f32], parts: &[Pcm16k]) -> Vec<bool> {
    let mut marks = vec![false; whole.len() / 320];
    for p in parts {
        // Utterances are exact slices of the input: find where each starts.
        let head = &p.0[..p.0.len().min(640)];
        if let Some(at) = whole.windows(head.len()).position(|w| w == head) {
            for f in at / 320..((at + p.0.len()) / 320).min(marks.len()) {
                marks[f] = true;
            }
        }
    }
    marks
}

/// Bench, not a test (benches/voice.sh runs it): the spectral detector
/// alone against spectral + Silero gate on one labelled set. Speech:
/// espeak-ng sentences in 4 voices at 2 rates, mixed at 0, 10 and 20 dB SNR
/// with brown, pink and white noise, a tone and plucked music; non-speech:
/// the same sounds alone and silence. Frame-level precision/recall (a
/// frame counts as detected when it is in an utterance that reaches
/// whisper) and utterances that reach whisper per hour of non-speech.
#[test]
#[ignore]
fn vad_labelled_set_report() {
    let cfg = ferrite::speech::VadConfig::default();
    let noises: Vec<(&str, Vec<f32>)> = vec![
        ("brown", sox_clip("brown", 8.0, &["brownnoise"])),
        ("pink", sox_clip("pink", 8.0, &["pinknoise"])),
        ("white", sox_clip("white", 8.0, &["whitenoise"])),
        ("tone", sox_clip("tone", 8.0, &["sine", "300"])),
        (
            "music",
            sox_clip(
                "music",
                8.0,
                &[
                    "pluck", "C4", "pluck", "E4", "pluck", "G4", "remix", "-", "tremolo", "3", "60",
                ],
            ),
        ),
    ];
    let texts = [
        "What is the capital of France?",
        "Turn off the lights in the kitchen.",
        "Set a timer for ten minutes.",
        "Remind me to buy milk tomorrow.",
    ];
    let voices = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"];
    // (true positives, false positives, false negatives) per detector.
    let mut frames = [(0usize, 0usize, 0usize); 3];
    let mut n_speech = 0;
    for (ti, text) in texts.iter().enumerate() {
        for (vi, voice) in voices.iter().enumerate() {
            for rate in [130u32, 175] {
                let clean = espeak(text, voice, rate, &format!("set-{ti}-{vi}-{rate}.wav")).0;
                for (nname, noise) in &noises {
                    for snr in [0f32, 10.0, 20.0] {
                        let gain = rms(&clean) / 10f32.powf(snr / 20.0) / rms(noise).max(1e-9);
                        let mut x: Vec<f32> = noise.iter().map(|v| v * gain).collect();
                        let at = 24_000;
                        for (i, s) in clean.iter().enumerate() {
                            if at + i < x.len() {
                                x[at + i] += s;
                            }
                        }
                        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                        if peak > 0.99 {
                            x.iter_mut().for_each(|v| *v *= 0.99 / peak);
                        }
                        let labels: Vec<bool> = (0..x.len() / 320)
                            .map(|f| {
                                let a = f * 320;
                                a >= at
                                    && a + 320 <= at + clean.len()
                                    && rms(&clean[a - at..a - at + 320]) > 0.1 * rms(&clean)
                            })
                            .collect();
                        let pcm = Pcm16k(x);
                        let parts = ferrite::speech::Vad::split(cfg, &pcm);
                        let gated: Vec<Pcm16k> = parts
                            .iter()
                            .filter(|p| silero().speech_ms(p).unwrap() >= 250)
                            .cloned()
                            .collect();
                        // Silero alone, frame by frame: the window holding
                        // each 20 ms frame's middle.
                        let probs = silero().probabilities(&pcm).unwrap();
                        let by_frame: Vec<bool> = (0..labels.len())
                            .map(|f| {
                                probs
                                    .get((f * 320 + 160) / 512)
                                    .is_some_and(|p| *p >= THRESHOLD)
                            })
                            .collect();
                        for (d, pred) in
                            [covered(&pcm.0, &parts), covered(&pcm.0, &gated), by_frame]
                                .iter()
                                .enumerate()
                        {
                            for (l, p) in labels.iter().zip(pred.iter()) {
                                match (l, p) {
                                    (true, true) => frames[d].0 += 1,
                                    (false, true) => frames[d].1 += 1,
                                    (true, false) => frames[d].2 += 1,
                                    _ => {}
                                }
                            }
                        }
                        n_speech += 1;
                        let _ = nname;
                    }
                }
            }
        }
    }
    // Non-speech: each sound alone (at three levels) and silence.
    let mut triggers = [0usize; 2];
    let mut seconds = 0.0;
    for (_, noise) in &noises {
        for level in [0.05f32, 0.2, 0.5] {
            let g = level / rms(noise).max(1e-9);
            let pcm = Pcm16k(noise.iter().map(|v| (v * g).clamp(-1.0, 1.0)).collect());
            seconds += pcm.seconds();
            let parts = ferrite::speech::Vad::split(cfg, &pcm);
            triggers[0] += parts.len();
            triggers[1] += parts
                .iter()
                .filter(|p| silero().speech_ms(p).unwrap() >= 250)
                .count();
        }
    }
    seconds += 60.0; // a minute of digital silence: no trigger by either
    let per_hour = |n: usize| n as f64 * 3600.0 / seconds;
    println!("labelled set: {n_speech} speech clips (4 voices x 2 rates x 4 sentences x 5 noises x 3 SNRs), {seconds:.0} s of non-speech");
    println!("| detector | frame precision | frame recall | utterances reaching whisper per hour of non-speech |");
    println!("|---|---|---|---|");
    for (d, name) in [
        "spectral (zero-download fallback)",
        "spectral + Silero gate (default)",
        "Silero frames alone (p >= 0.5; no utterances)",
    ]
    .iter()
    .enumerate()
    {
        let (tp, fp, fn_) = frames[d];
        let trig = triggers
            .get(d)
            .map_or("–".to_string(), |t| format!("{:.0}", per_hour(*t)));
        println!(
            "| {name} | {:.3} | {:.3} | {trig} |",
            tp as f64 / (tp + fp).max(1) as f64,
            tp as f64 / (tp + fn_).max(1) as f64,
        );
    }
}
