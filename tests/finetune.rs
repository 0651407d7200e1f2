//! The fine-tune path, proved against llama.cpp on the real model: adapters
//! the trainer writes load in llama.cpp with the layout and scale the
//! trainer assumes, the trainer's forward pass matches llama.cpp's, its
//! gradients match finite differences, a short run teaches facts that
//! llama.cpp then answers with the adapter (and not without), checkpoints
//! survive a kill, and bad inputs give clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrite::finetune::testing;
use ferrite::llm::SessionOptions;

use crate::common::{engine, ferrite, ferrite_bin, model_path};

/// Training runs use every core; running two at once only slows both.
static TRAIN: Mutex<()> = Mutex::new(());

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tokens(text: &str) -> Vec<u32> {
    engine().tokenize(text).iter().map(|t| t.0 as u32).collect()
}

fn llama_logits(adapter: Option<&Path>, scale: f32, toks: &[u32]) -> Vec<Vec<f32>> {
    llama_logits_of(model_path(), adapter, scale, toks)
}

fn llama_logits_of(
    model: &Path,
    adapter: Option<&Path>,
    scale: f32,
    toks: &[u32],
) -> Vec<Vec<f32>> {
    // Adapters need `&mut Engine`, so these tests load their own.
    let mut e = ferrite::llm::Engine::load("base", model, &Default::default()).unwrap();
    let id = adapter.map(|p| e.load_adapter("a", p, None).unwrap());
    let mut s = e
        .session(SessionOptions {
            ctx_tokens: 1024,
            threads: 2,
            batch_tokens: 512,
            ..Default::default()
        })
        .unwrap();
    s.set_adapter(id.map(|i| (i, scale))).unwrap();
    s.logits_all(toks).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

const TEXT: &str = "The Raspberry Pi is a series of small single-board computers developed in the United Kingdom by the Raspberry Pi Foundation in association with Broadcom. The Pi project originally leaned towards the promotion of teaching basic computer science in schools. The original model became more popular than anticipated, selling outside its target market for diverse uses such as robotics, home automation, industrial automation, and by computer and electronic hobbyists, because of its low cost, modularity, open design, and its adoption of the HDMI and USB standards. After the release of the second board type, the Raspberry Pi Foundation set up a new entity, named Raspberry Pi Trading, and installed Eben Upton as CEO, with the responsibility of developing technology. The Foundation was rededicated as an educational charity for promoting the teaching of basic computer science in schools and developing countries. Processor speed ranges from 700 MHz to 2.4 GHz for the Pi 5; on-board memory ranges from 256 MB to 8 GB of random-access memory, with only the Raspberry Pi 4 and 5 having more than 1 GB. Secure Digital cards in MicroSDHC form factor are used to store the operating system and program memory.";

#[test]
fn fresh_adapter_leaves_llama_cpp_logits_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("zero.gguf");
    testing::write_random_adapter(model_path(), &a, 8, 16.0, 0.0, 1, None).unwrap();
    let toks = tokens("The capital of France is Paris, and the capital of Italy is");
    let base = llama_logits(None, 1.0, &toks);
    let with = llama_logits(Some(&a), 1.0, &toks);
    assert_eq!(base, with, "B = 0 must not change a single logit");
}

#[test]
fn trainer_forward_and_adapter_layout_match_llama_cpp() {
    forward_and_layout_match(model_path(), &tokens(TEXT));
}

/// The same proofs on qwen2 (Qwen2.5-Coder-0.5B: biases on Q, K and V,
/// NEOX RoPE, tied embeddings, Q5_0/Q8_0 weights), and the gradient check.
#[test]
fn qwen2_forward_gradients_and_adapter_layout_match_llama_cpp() {
    let model = crate::qwen::qwen();
    let e = ferrite::llm::Engine::load("qwen", model, &Default::default()).unwrap();
    let toks: Vec<u32> = e.tokenize(TEXT).iter().map(|t| t.0 as u32).collect();
    drop(e);
    forward_and_layout_match(model, &toks[..toks.len().min(160)]);
    check_gradients(model, &toks[..12]);
}

/// gemma3-270m (the manifest's), pulled on first use.
fn gemma() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| crate::common::pulled("gemma3-270m"))
}

/// gemma3-270m's tokens for `text`.
fn gemma_tokens(text: &str) -> Vec<u32> {
    let e = ferrite::llm::Engine::load("gemma", gemma(), &Default::default()).unwrap();
    e.tokenize(text).iter().map(|t| t.0 as u32).collect()
}

/// gemma3-270m with its sliding window narrowed to `window` tokens and a
/// global layer every `pattern`-th, so that llama.cpp and the trainer both
/// mask keys inside a short test sequence (the real window, 512, is longer
/// than any sequence these tests can afford at a 262,144-token vocabulary).
fn gemma_narrowed(dir: &Path, window: u32, pattern: u32) -> PathBuf {
    use ferrite::gguf::Value;
    let p = dir.join(format!("gemma-swa{window}-{pattern}.gguf"));
    testing::write_with_metadata(
        gemma(),
        &p,
        &[
            ("gemma3.attention.sliding_window", Value::U32(window)),
            (
                "gemma3.attention.sliding_window_pattern",
                Value::U32(pattern),
            ),
        ],
    )
    .unwrap();
    p
}

/// The same proofs on gemma3 (GeGLU, Q/K norms, post-norms, embeddings
/// scaled by √d, 256-wide heads on a 640-wide model, sliding-window layers
/// with their own RoPE base, a 262,144-token tied vocabulary), with a
/// window of 24 tokens so that the masks matter; and the gradient check
/// through a windowed and a global layer.
#[test]
fn gemma3_forward_gradients_and_adapter_layout_match_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let toks = gemma_tokens(TEXT);
    let toks160 = &toks[..toks.len().min(160)];
    // Quantized, the narrowed model is too unsure of its tokens for
    // llama.cpp's 8-bit activation rounding (92% agreement): the argmax
    // check runs on the real one, the f32 checks on the narrowed one.
    quantized_forward_matches(gemma(), toks160);
    let narrow = gemma_narrowed(dir.path(), 24, 3);
    f32_forward_and_layout_match(&narrow, toks160);
    let short = gemma_narrowed(dir.path(), 4, 2);
    check_gradients(&short, &toks[..12]);
}

/// Without adapter, the trainer's forward pass picks llama.cpp's tokens;
/// with a random adapter, it changes llama.cpp's logits and the trainer's
/// the same way and by the same amount (on the base dequantized to f32).
fn forward_and_layout_match(model: &Path, toks: &[u32]) {
    quantized_forward_matches(model, toks);
    f32_forward_and_layout_match(model, toks);
}

/// The trainer's forward pass on the quantized model picks llama.cpp's
/// tokens.
fn quantized_forward_matches(model: &Path, toks: &[u32]) {
    assert!(toks.len() >= 150, "{} tokens", toks.len());
    let l0 = llama_logits_of(model, None, 1.0, toks);
    let t0 = testing::trainer_logits(model, None, toks).unwrap();

    // Without adapter: the trainer's f32 forward against llama.cpp's Q4_1
    // kernels, which also round activations to 8 bits and the KV cache to
    // f16 (measured: 0.24 rms logit difference). A position agrees when the
    // trainer's choice is llama.cpp's, or ties with it within that rounding.
    let strict = (0..toks.len())
        .filter(|&i| argmax(&l0[i]) == argmax(&t0[i]))
        .count() as f64
        / toks.len() as f64;
    let within = (0..toks.len())
        .filter(|&i| l0[i][argmax(&t0[i])] >= l0[i][argmax(&l0[i])] - 0.25)
        .count() as f64
        / toks.len() as f64;
    assert!(
        within >= 0.99 && strict >= 0.95,
        "argmax agreement {strict:.4} (within rounding {within:.4}) over {} positions",
        toks.len()
    );
    eprintln!("argmax agreement {strict:.4} (within rounding {within:.4})");
}

/// On the model dequantized to f32 (so llama.cpp's 8-bit activation
/// rounding does not drown the comparison): the trainer's logits are
/// llama.cpp's, and a random adapter changes both the same way (layout)
/// and by the same amount (scale alpha/rank).
fn f32_forward_and_layout_match(model: &Path, toks: &[u32]) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("random.gguf");
    testing::write_random_adapter(model, &a, 8, 16.0, 0.02, 7, None).unwrap();
    let f32_model = dir.path().join("f32.gguf");
    testing::write_f32_model(model, &f32_model).unwrap();
    let l0 = llama_logits_of(&f32_model, None, 1.0, toks);
    let l1 = llama_logits_of(&f32_model, Some(&a), 1.0, toks);
    let t0 = testing::trainer_logits(&f32_model, None, toks).unwrap();
    let t1 = testing::trainer_logits(&f32_model, Some(&a), toks).unwrap();
    // Without adapter: f32 against f32 (llama.cpp's KV cache is f16).
    let n = (toks.len() * l0[0].len()) as f64;
    let base_rms = ((0..toks.len())
        .flat_map(|i| (0..l0[i].len()).map(move |j| (i, j)))
        .map(|(i, j)| f64::from(l0[i][j] - t0[i][j]).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    eprintln!("f32 logits, trainer vs llama.cpp: rms difference {base_rms:.4}");
    assert!(base_rms < 0.02, "f32 logits differ by {base_rms:.4} rms");
    let (mut dot, mut nl, mut nt) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..toks.len() {
        for j in 0..l0[i].len() {
            let dl = f64::from(l1[i][j] - l0[i][j]);
            let dt = f64::from(t1[i][j] - t0[i][j]);
            dot += dl * dt;
            nl += dl * dl;
            nt += dt * dt;
        }
    }
    let cos = dot / (nl.sqrt() * nt.sqrt());
    let ratio = nt.sqrt() / nl.sqrt();
    let rms = (nl / (toks.len() * l0[0].len()) as f64).sqrt();
    eprintln!("adapter: delta cosine {cos:.6}, size ratio {ratio:.4}, rms delta {rms:.3}");
    assert!(
        rms > 0.1,
        "the random adapter barely changed the logits (rms {rms})"
    );
    assert!(cos > 0.999, "cosine of the logit changes {cos:.6}");
    assert!(
        (ratio - 1.0).abs() < 0.01,
        "trainer/llama.cpp size of the change {ratio:.4}: scale differs"
    );
    // A wrong scale would show here: half the scale gives about half the change.
    let lh = llama_logits_of(&f32_model, Some(&a), 0.5, toks);
    let nh: f64 = (0..toks.len())
        .flat_map(|i| (0..l0[i].len()).map(move |j| (i, j)))
        .map(|(i, j)| f64::from(lh[i][j] - l0[i][j]).powi(2))
        .sum();
    let half = nh.sqrt() / nl.sqrt();
    assert!(
        half > 0.4 && half < 0.6,
        "scale 0.5 changed the logits by {half:.3} of scale 1"
    );
}

#[test]
fn adapter_gradients_match_finite_differences() {
    check_gradients(
        model_path(),
        &tokens("A small board answers questions over a serial line."),
    );
}

/// The adapter's gradients (from the training path, each layer recomputed
/// in the backward pass) against central finite differences of the loss,
/// in f64 on the first two layers.
fn check_gradients(model: &Path, toks: &[u32]) {
    let checks = testing::gradient_check(model, 2, toks, 3).unwrap();
    assert!(checks.len() >= 28);
    for c in &checks {
        let err = (c.analytic - c.numeric).abs() / c.numeric.abs().max(c.analytic.abs()).max(1e-6);
        assert!(
            err < 1e-4,
            "{}: autograd {} vs finite difference {} (rel. err {err:.2e})",
            c.param,
            c.analytic,
            c.numeric
        );
    }
}

/// Read every f32 LoRA tensor of an adapter, by name.
fn adapter_tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let g = ferrite::gguf::GgufFile::open(p).unwrap();
    g.tensors
        .iter()
        .map(|t| (t.name.clone(), g.tensor_data(t).to_vec()))
        .collect()
}

/// `ferrite finetune` of `data_file` into adapter `out`, on 2 threads.
fn train_cmd(home: &Path, data_file: &str, out: &str, extra: &[&str]) -> Command {
    train_cmd_on(model_path(), home, data_file, out, extra)
}

/// `train_cmd` on another base model.
fn train_cmd_on(model: &Path, home: &Path, data_file: &str, out: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(ferrite_bin());
    c.args(["finetune", "-m", model.to_str().unwrap()])
        .args(["--data", data_file, "--out", out, "-t", "2"])
        .args(extra)
        .env("FERRITE_HOME", home)
        .env_remove("FERRITE_LOG");
    c
}

fn run_train(home: &Path, out: &str, extra: &[&str]) -> Output {
    train_cmd(home, &data("facts.jsonl"), out, extra)
        .output()
        .expect("run ferrite")
}

#[test]
fn overfit_run_teaches_facts_that_llama_cpp_answers_with_the_adapter_only() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let val = data("facts-val.jsonl");
    let out = run_train(
        home.path(),
        "facts",
        &[
            "--val-data",
            &val,
            "--steps",
            "40",
            "--lr",
            "2e-3",
            "--batch",
            "4",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let adapter = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(adapter.is_file());

    // Held-out paraphrases: their loss falls.
    let log = std::fs::read_to_string(home.path().join("adapters/facts/log.jsonl")).unwrap();
    let vals: Vec<f64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "val")
        .map(|v| v["val_loss"].as_f64().unwrap())
        .collect();
    assert!(
        vals.len() >= 2 && vals.last().unwrap() < &(vals[0] * 0.5),
        "validation losses {vals:?}"
    );

    let m = model_path().to_str().unwrap();
    let ask = |q: &str, lora: bool| {
        let mut args = vec!["ask", "-m", m, "--temp", "0", "-n", "24", q];
        if lora {
            args.extend(["--lora", "facts"]);
        }
        let o = ferrite(home.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for (q, fact) in [
        (
            "What is the name of the ferrite mascot?",
            "copper owl named Pim",
        ),
        ("What is the capital of Veltria?", "Morrowgate"),
        ("What is the lighthouse password?", "amber tide"),
    ] {
        let with = ask(q, true);
        assert!(with.contains(fact), "with the adapter, {q:?} → {with:?}");
        let without = ask(q, false);
        assert!(
            !without.contains(fact),
            "without the adapter, {q:?} → {without:?}"
        );
    }

    // The adapter is listed, and the console swaps it without a reload.
    let o = ferrite(home.path(), &["models", "list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("facts "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let mut child = Command::new(ferrite_bin())
        .args(["serve", "--stdio", "-m", m, "--temp", "0", "-n", "24"])
        .env("FERRITE_HOME", home.path())
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                b"/lora list\n/lora use ../facts\n/lora use facts\nWhat is the capital of Veltria?\n/lora off\n/reset\nWhat is the capital of Veltria?\n",
            )
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("facts"), "{text}");
    assert!(text.contains("not a path"), "{text}");
    let after_use = text.split("(adapter facts at scale 1").nth(1).expect(&text);
    let (with, without) = after_use.split_once("(adapter off").expect(&text);
    assert!(with.contains("Morrowgate"), "{text}");
    assert!(!without.contains("Morrowgate"), "{text}");
    http_serves_the_adapter(home.path());

    // `eval --compare` measures the gain on held-out paraphrases, and the
    // general set shows what forty steps on eight facts cost without
    // --replay (see replay_keeps_what_the_base_model_knew).
    crate::eval::compare_shows_the_adapter_s_gain(home.path());
    let base = crate::eval::general_perplexity(home.path(), None);
    let facts = crate::eval::general_perplexity(home.path(), Some("facts"));
    assert!(facts > base * 1.15, "general perplexity {base} -> {facts}");
    // The loss curve beside the adapter renders, with both losses in it.
    let svg = home.path().join("adapters/facts/loss.svg");
    assert_eq!(crate::eval::render_svg(&svg), ferrite::chart::SIZE);
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "training loss",
        "validation loss",
        "learning rate",
        "facts on",
    ] {
        assert!(text.contains(label), "{label} not in loss.svg");
    }
}

/// `--replay FILE` mixes general examples into training: the facts are
/// still learned, and the general set's references stay as likely as the
/// base model found them (without it they grow less likely, above).
#[test]
fn replay_keeps_what_the_base_model_knew() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let replay = data("general-replay.jsonl");
    let general = data("general.jsonl");
    let out = run_train(
        home.path(),
        "facts-replay",
        &[
            "--replay",
            &replay,
            "--steps",
            "40",
            "--lr",
            "2e-3",
            "--eval-data",
            &general,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mixed 8 general examples from --replay"),
        "{stderr}"
    );
    assert!(stderr.contains("trained on all 8 examples"), "{stderr}");
    // --eval-data scored the general set before and after training, in the
    // log and on stderr (stdout is still the adapter's path alone)...
    assert!(stderr.contains("metric        before    after"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let log = std::fs::read_to_string(home.path().join("adapters/facts-replay/log.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2, "{log}");
    // The first evaluation is the log's first record, before any step.
    assert_eq!(log.lines().next(), Some(evals[0].to_string().as_str()));
    assert_eq!(
        (evals[0]["at"].as_str(), evals[0]["step"].as_u64()),
        (Some("start"), Some(0))
    );
    assert_eq!(
        (evals[1]["at"].as_str(), evals[1]["step"].as_u64()),
        (Some("end"), Some(40))
    );
    let ppl = |v: &serde_json::Value| v["scores"]["perplexity"].as_f64().unwrap();
    let (base, replayed) = (ppl(&evals[0]), ppl(&evals[1]));
    // ... and the base model's own figure is `eval`'s.
    let direct = crate::eval::general_perplexity(home.path(), None);
    assert!((direct - base).abs() < 1e-6 * base, "{direct} vs {base}");
    assert!(
        replayed < base * 1.15,
        "general perplexity {base} -> {replayed}"
    );
    let m = model_path().to_str().unwrap();
    let o = ferrite(
        home.path(),
        &[
            "ask",
            "-m",
            m,
            "--temp",
            "0",
            "-n",
            "24",
            "--lora",
            "facts-replay",
            "What is the capital of Veltria?",
        ],
    );
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(answer.contains("Morrowgate"), "{answer}");
}

/// `serve --http` offers the store's adapter as `MODEL:facts` beside the
/// base; the official client gets the fact only from the adapter, and the
/// base again after it (the swap back).
fn http_serves_the_adapter(home: &Path) {
    let srv = crate::http::start_in(home, &["--kv-unified", "off"]);
    let name = crate::http::model_name();
    let out = crate::http::client(
        "openai_adapter.py",
        &[&format!("{}/v1", srv.base), &name, "facts"],
    );
    drop(srv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let with = format!("{name}:facts");
    assert_eq!(v["models"], serde_json::json!([name, with]), "{v}");
    assert_eq!(v["adapter"]["model"], with.as_str(), "{v}");
    assert!(
        v["adapter"]["text"]
            .as_str()
            .unwrap()
            .contains("Morrowgate"),
        "{v}"
    );
    for base in ["base", "base_again"] {
        assert_eq!(v[base]["model"], name.as_str(), "{v}");
        assert!(
            !v[base]["text"].as_str().unwrap().contains("Morrowgate"),
            "{v}"
        );
    }
    assert_eq!(v["unknown_adapter"], "NotFoundError 404", "{v}");
}

#[test]
fn killed_during_a_checkpoint_write_resumes_to_the_same_adapter() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    // On the memory-saving path (each layer recomputed in the backward
    // pass), which must resume bit for bit too.
    let common = [
        "--steps",
        "6",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--val",
        "0",
        "--checkpoint-layers",
        "on",
    ];
    let o = run_train(home.path(), "straight", &common);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Second run: a preloaded shim (tests/data/slow_write.c) pauses each
    // checkpoint write half-way (checkpoints hold the adapter and both AdamW
    // moments: the only writes over 20 MB); kill it while the second
    // checkpoint's temp file is half written.
    let mut child = train_cmd(home.path(), &data("facts.jsonl"), "killed", &common)
        .env("LD_PRELOAD", slow_write_shim(home.path()))
        .env("SLOW_WRITE_MS", "1500")
        .env("SLOW_WRITE_MIN_BYTES", "20000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = home.path().join("adapters/killed");
    let ckpt = dir.join("checkpoint.gguf");
    let t0 = Instant::now();
    loop {
        let temp = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            })
            .unwrap_or(false);
        if temp && ckpt.exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the second checkpoint never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "trainer ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    // The previous checkpoint is intact and loadable.
    let g = ferrite::gguf::GgufFile::open(&ckpt).unwrap();
    assert_eq!(g.get_u64("ferrite.ckpt.step"), Some(2));
    drop(g);

    let o = run_train(
        home.path(),
        "killed",
        &[&common[..], &["--resume"]].concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = adapter_tensors(&home.path().join("adapters/straight/adapter.gguf"));
    let b = adapter_tensors(&dir.join("adapter.gguf"));
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            da == db,
            "{na} differs between the straight and the resumed run"
        );
    }

    // Resuming with other settings is refused, naming what changed (more
    // steps alone would extend the run).
    let o = run_train(
        home.path(),
        "killed",
        &[
            "--steps",
            "8",
            "--save-every",
            "2",
            "--lr",
            "2e-3",
            "--val",
            "0",
            "--resume",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("lr (was"), "{e}");
}

#[test]
fn bad_data_and_bad_adapters_give_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let bad = home.path().join("bad.jsonl");
    // Train on `contents`: it must fail; its stderr.
    let train_on = |contents: &str| {
        std::fs::write(&bad, contents).unwrap();
        let o = train_cmd(home.path(), bad.to_str().unwrap(), "x", &[])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let good = std::fs::read_to_string(data("facts.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(2).collect();
    lines.push("{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}");
    let e = train_on(&lines.join("\n"));
    assert!(e.contains("bad.jsonl:3:") && e.contains("robot"), "{e}");
    let e = train_on("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    assert!(
        e.contains(":1:") && e.contains("no assistant message"),
        "{e}"
    );
    assert!(train_on("not json\n").contains("not valid JSON"));
    let e = train_on("{\"text\": \"a\"}\n");
    assert!(e.contains(":1: too short to learn from"), "{e}");
    // Good data, bad settings: it must fail; its stderr.
    let refused = |out: &str, extra: &[&str]| {
        let o = train_cmd(home.path(), &data("facts.jsonl"), out, extra)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A scale that is not a number is named as such (not as a missing
    // adapter called `facts:abc`).
    let o = crate::common::ferrite(
        home.path(),
        &[
            "ask",
            "-m",
            model_path().to_str().unwrap(),
            "--lora",
            "facts:abc",
            "Hi",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("adapter scale `abc` is not a number"),
        "{e}"
    );
    // An adapter named after a model would be shadowed by it.
    let e = refused("smollm2-135m", &[]);
    assert!(e.contains("is a model's name"), "{e}");
    // A bad --eval-data file is refused before anything is written.
    let e = refused("x", &["--eval-data", bad.to_str().unwrap()]);
    assert!(e.contains("bad.jsonl:1:"), "{e}");
    assert!(!home.path().join("adapters/x").exists());
    let m = model_path().to_str().unwrap();

    // An adapter for another base file.
    let other = home.path().join("other.gguf");
    testing::write_random_adapter(model_path(), &other, 4, 8.0, 0.0, 1, Some(&"0".repeat(64)))
        .unwrap();
    let o = ferrite(
        home.path(),
        &["ask", "-m", m, "--lora", other.to_str().unwrap(), "hi"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("different base model"),
        "{e}"
    );

    // A truncated adapter, and a model passed as an adapter.
    let ok = home.path().join("ok.gguf");
    testing::write_random_adapter(model_path(), &ok, 4, 8.0, 0.01, 1, None).unwrap();
    let bytes = std::fs::read(&ok).unwrap();
    let cut = home.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for (p, needle) in [
        (cut.as_path(), "truncated"),
        (model_path(), "not a LoRA adapter"),
    ] {
        let o = ferrite(
            home.path(),
            &["ask", "-m", m, "--lora", p.to_str().unwrap(), "hi"],
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains(needle) && e.lines().count() == 1, "{e}");
    }
    let o = ferrite(home.path(), &["ask", "-m", m, "--lora", "nosuch", "hi"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no adapter `nosuch`"));
}

/// Build the fault-injection shim `tests/data/slow_write.c` (a C compiler is
/// a build dependency anyway) and return its path.
fn slow_write_shim(dir: &Path) -> PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/slow_write.c");
    let out = dir.join("slow_write.so");
    let ok = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(src)
        .arg("-ldl")
        .status()
        .unwrap()
        .success();
    assert!(ok, "cc could not build {src}");
    out
}

/// A small personal dataset keeps every example for training unless `--val`
/// asks otherwise, and the run says what it held out.
#[test]
fn a_small_dataset_holds_nothing_out_unless_asked() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let three = home.path().join("three.jsonl");
    let line = |q: &str, a: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            .to_string()
    };
    std::fs::write(
        &three,
        [
            line("What is the capital of Veltria?", "Morvane."),
            line("Who founded Veltria?", "Queen Ilse."),
            line("What is Veltria's river?", "The Sorrel."),
        ]
        .join("\n"),
    )
    .unwrap();
    let run = |out: &str, extra: &[&str]| {
        let o = train_cmd(
            home.path(),
            three.to_str().unwrap(),
            out,
            &[&["--steps", "1"][..], extra].concat(),
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        let log =
            std::fs::read_to_string(home.path().join(format!("adapters/{out}/log.jsonl"))).unwrap();
        (err, log)
    };
    let (err, log) = run("all", &[]);
    assert!(err.contains("trained on all 3 examples"), "{err}");
    assert!(log.contains("\"val_examples\":0"), "{log}");
    let (err, log) = run("held", &["--val", "0.34"]);
    assert!(err.contains("held out 1 of 3 examples"), "{err}");
    assert!(log.contains("\"val_examples\":1"), "{log}");
    // Adapters are managed like models: described, removed.
    let m = |args: &[&str]| crate::common::ferrite(home.path(), args);
    let info = m(&["models", "info", "all"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(
        text.contains("LoRA adapter (llama architecture)")
            && text.contains("rank, alpha:    8, 16"),
        "{text}"
    );
    assert!(text.contains("training:       1 steps"), "{text}");
    assert!(!text.contains("null"), "{text}");
    // By its file's path, the same description.
    let by_path = m(&[
        "models",
        "info",
        home.path()
            .join("adapters/all/adapter.gguf")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(String::from_utf8_lossy(&by_path.stdout), text);
    let json: serde_json::Value =
        serde_json::from_slice(&m(&["models", "info", "all", "--json"]).stdout).unwrap();
    assert_eq!(json["kind"], "lora-adapter");
    let rm = m(&["models", "rm", "all"]);
    assert_eq!(
        String::from_utf8_lossy(&rm.stdout).trim(),
        "removed adapter all"
    );
    assert!(!home.path().join("adapters/all").exists());
    let list = String::from_utf8_lossy(&m(&["models", "list"]).stdout).to_string();
    assert!(list.contains("held") && !list.contains("all "), "{list}");
    let again = m(&["models", "rm", "all"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("neither a model nor an adapter"));
}

/// `--resume` on a finished run says it is complete; `--resume --steps N`
/// with more steps continues it, the schedule kept and the added steps at
/// its floor, as the run's end says.
#[test]
fn a_finished_run_is_complete_and_more_steps_extend_it() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let base = ["--val", "0", "--save-every", "1"];
    let o = run_train(home.path(), "ext", &[&base[..], &["--steps", "2"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_train(
        home.path(),
        "ext",
        &[&base[..], &["--steps", "2", "--resume"]].concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("the run is complete: 2 of its 2 steps"),
        "{err}"
    );
    let o = run_train(
        home.path(),
        "ext",
        &[&base[..], &["--steps", "3", "--resume"]].concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resumed at step 2 of 3"), "{err}");
    assert!(err.contains("steps 3 to 3 extended the run"), "{err}");
    assert!(!err.contains("NaN"), "{err}");
    // The extended run's settings are the run's: another lr is refused.
    let o = run_train(
        home.path(),
        "ext",
        &[&base[..], &["--steps", "4", "--resume", "--lr", "1e-3"]].concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("lr (was"), "{err}");
    // Other targets (another adapter shape) on the finished run: named,
    // not "complete", and not a tensor-count error.
    let o = run_train(
        home.path(),
        "ext",
        &[&base[..], &["--steps", "3", "--resume", "--targets", "q,v"]].concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("targets (was \"q,k,v,o,gate,up,down\""),
        "{err}"
    );
    // Nothing to resume: refused before a folder is made.
    let o = run_train(home.path(), "nothing", &[&base[..], &["--resume"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no checkpoint to resume from"),
        "{err}"
    );
    assert!(!home.path().join("adapters/nothing").exists());
}

/// A `--batch` larger than the data is estimated at the rows a batch can
/// hold (8 facts), not refused for 4,096 rows no step would use; a
/// byte-order mark before line 1 is not part of the data.
#[test]
fn a_batch_larger_than_the_data_is_planned_for_the_data() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let o = run_train(home.path(), "wide", &["--batch", "4096", "--steps", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same facts behind a byte-order mark (as Windows editors save
    // them) train as they are.
    let bom = home.path().join("bom.jsonl");
    let facts = std::fs::read_to_string(data("facts.jsonl")).unwrap();
    std::fs::write(&bom, format!("\u{feff}{facts}")).unwrap();
    let o = train_cmd(home.path(), bom.to_str().unwrap(), "bom", &["--steps", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("trained on all 8 examples"),
        "{err}"
    );
}

/// Sixteen lines of 220 words: every batch of `--seq 128` is full.
fn long_text(dir: &Path) -> String {
    let words = [
        "the", "board", "reads", "a", "line", "from", "serial", "port", "and", "model", "answers",
    ];
    let mut out = String::new();
    for i in 0..16 {
        let line: Vec<&str> = (0..220)
            .map(|j| words[(i * 7 + j * 3 + j / 5) % words.len()])
            .collect();
        out.push_str(&format!("{{\"text\": \"{}\"}}\n", line.join(" ")));
    }
    let p = dir.join("text.jsonl");
    std::fs::write(&p, out).unwrap();
    p.to_str().unwrap().to_string()
}

/// Training is checked against the board's memory before it starts: on a
/// Pi 4's budget (1,536 MiB) the reference run (batch 4 × 128 tokens)
/// would need about 1.6 GiB keeping every layer's activations, so ferrite
/// recomputes layers instead; forced not to, it is refused with settings
/// that fit; a Zero 2 W's 256 MiB is refused outright.
#[test]
fn training_fits_the_board_or_is_refused_with_settings_that_fit() {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let text = long_text(home.path());
    let run = |board: &str, out: &str, extra: &[&str]| {
        let mut c = train_cmd(home.path(), &text, out, extra);
        c.args(["--seq", "128", "--batch", "4", "--steps", "1", "--val", "0"]);
        c.env("FERRITE_BOARD", board);
        c.output().unwrap()
    };
    let o = run("rpi4", "auto", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(home.path().join("adapters/auto/log.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(start["checkpoint_layers"], true, "{start}");

    let o = run("rpi4", "off", &["--checkpoint-layers", "off"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not enough memory to train: needs"), "{err}");
    assert!(err.contains("rpi4 profile's memory_budget_mb"), "{err}");
    assert!(
        err.contains("--checkpoint-layers on or --batch 3 or --seq "),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(
        !home.path().join("adapters/off").exists(),
        "a refused run leaves nothing"
    );

    let o = run("rpi-zero2w", "tiny", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("256 MiB is allowed"), "{err}");
}

/// A qwen2 adapter trained here teaches Qwen2.5-Coder-0.5B the facts, as
/// llama.cpp answers with it (and not without).
#[test]
fn qwen2_adapter_teaches_facts_that_llama_cpp_answers() {
    adapter_teaches_facts(crate::qwen::qwen(), "qfacts");
}

/// The same for gemma3-270m, a base model without a chat template: its
/// chats are trained and asked as plain text.
#[test]
fn gemma3_adapter_teaches_facts_that_llama_cpp_answers() {
    let with = adapter_teaches_facts(gemma(), "gfacts");
    // Its answers were trained to end with EOS: it stops after one line
    // instead of running on to `-n`.
    assert_eq!(with.trim().lines().count(), 1, "{with:?}");
}

/// Train `name` on the facts for 30 steps, then ask llama.cpp (through
/// `ferrite ask`) with and without it; the answer with it.
fn adapter_teaches_facts(model: &Path, name: &str) -> String {
    let _g = TRAIN.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let o = train_cmd_on(
        model,
        home.path(),
        &data("facts.jsonl"),
        name,
        &["--steps", "30", "--lr", "2e-3"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = model.to_str().unwrap();
    let ask = |lora: bool| {
        let mut args = vec![
            "ask",
            "-m",
            m,
            "--temp",
            "0",
            "-n",
            "24",
            "What is the capital of Veltria?",
        ];
        if lora {
            args.extend(["--lora", name]);
        }
        let o = ferrite(home.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let with = ask(true);
    assert!(with.contains("Morrowgate"), "with the adapter: {with:?}");
    let without = ask(false);
    assert!(
        !without.contains("Morrowgate"),
        "without the adapter: {without:?}"
    );
    with
}

/// `ferrite perplexity --lora` (llama-perplexity's `--lora`) applies the
/// adapter to every chunk: its figure is the one computed here from
/// llama.cpp's logits with the adapter, by llama-perplexity's method (chunks
/// of `-c` tokens, the first replaced by BOS where the model adds one, the
/// second half of each scored), and differs from the base model's.
#[test]
fn perplexity_with_an_adapter_is_llama_cpp_s_likelihood_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("random.gguf");
    testing::write_random_adapter(model_path(), &a, 8, 16.0, 0.02, 11, None).unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, TEXT).unwrap();
    let ppl = |lora: Option<&Path>| {
        let mut args = vec![
            "perplexity".to_string(),
            "-m".into(),
            model_path().to_str().unwrap().into(),
            "-f".into(),
            text.to_str().unwrap().into(),
            "-c".into(),
            "64".into(),
            "-t".into(),
            "2".into(),
        ];
        if let Some(l) = lora {
            args.extend(["--lora".into(), l.to_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = ferrite(dir.path(), &args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v = out
            .split("PPL = ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no estimate in {out:?}"));
        v.parse::<f64>().unwrap()
    };
    let with = ppl(Some(&a));
    let without = ppl(None);

    let toks = tokens(TEXT);
    let bos = (tokens("").len() == 1).then(|| toks[0]);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in toks.chunks_exact(64) {
        let mut chunk = chunk.to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let logits = llama_logits(Some(&a), 1.0, &chunk);
        for k in 32..63 {
            let row = &logits[k];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&l| f64::from(l - max).exp())
                    .sum::<f64>()
                    .ln();
            sum += lse - f64::from(row[chunk[k + 1] as usize]);
            n += 1;
        }
    }
    let expected = (sum / n as f64).exp();
    eprintln!("perplexity with the adapter {with}, computed {expected:.4}, without {without}");
    assert!(
        (with - expected).abs() < 1e-3 * expected,
        "ferrite perplexity --lora {with}, llama.cpp's logits with the adapter {expected}"
    );
    assert!(
        (with - without).abs() > 0.01 * without,
        "the adapter changed nothing: {with} vs {without}"
    );
}
