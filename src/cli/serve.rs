//! `ferrite serve` and `ferrite listen`: the assistant loop on a serial port
//! or stdio, with spoken queries from a microphone or WAV files.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use ferrite::assistant;
use ferrite::console::serial::{Serial, SerialSettings};
use ferrite::console::stdio::Stdio;
use ferrite::hw;
use ferrite::speech::{self, AudioSource};

use super::args::{EarArgs, ServeArgs};
use super::{Ctx, Out};

/// `serve` and `listen`: the assistant loop on a console, with spoken queries
/// when `--listen` (always for `listen`).
pub(crate) fn run(ctx: &Ctx, a: ServeArgs, listen: bool, out: &mut Out) -> anyhow::Result<()> {
    let listen = listen || a.listen;
    if a.ear.list_devices {
        for d in speech::capture::list_devices()? {
            writeln!(out, "{:<28} {}", d.name, d.description)?;
        }
        return Ok(());
    }
    // Under systemd from here on: the start timeout is extended while the
    // model (and, with --listen, the Whisper model) is found or pulled.
    let service = super::service::Systemd::start();
    check_ctx_size(ctx, &a.model)?;
    // The HTTP API runs alone when --http is the only front end named (or
    // the board's http_listen is, on a board without a serial console).
    let console_named = a.port.is_some() || a.stdio || listen;
    let http_addr = a.http.or(ctx.board.http_listen);
    if let Some(addr) = http_addr {
        if !console_named && (a.http.is_some() || ctx.board.serial_port.is_none()) {
            return http(ctx, &a, addr, &service);
        }
    }
    // `listen` talks to the terminal unless a port is named.
    let stdio = a.stdio
        || (listen
            && a.port.is_none()
            && (!a.ear.wav.is_empty() || ctx.board.serial_port.is_none()));
    let api = match http_addr {
        Some(addr) => Some(start_api(ctx, &a, addr, false)?),
        None => None,
    };
    let opts = assistant::ServeOptions {
        echo: !a.no_echo && !stdio,
        json: a.json,
        max_line_bytes: a.max_line as usize,
        prompt_cache: a.prompt_cache,
        ..ctx.serve_options(a.lora, &a.model, &a.gen, &a.draft, a.system)?
    };
    let mut led = None;
    let ear = if listen {
        Some(ear(ctx, &a.ear, &mut led)?)
    } else {
        None
    };

    let result = if stdio {
        assistant::serve(
            &opts,
            (&ctx.store, &ctx.manifest),
            &mut Stdio::new(),
            ear.as_ref(),
            api.as_ref(),
            &service,
        )
    } else {
        let path = a.port.or(ctx.board.serial_port.clone()).context(
            "no serial port: pass --port PATH (or --stdio), or set serial_port in the board profile",
        )?;
        let mut serial = Serial::new(SerialSettings {
            path,
            baud: a.baud.unwrap_or(ctx.board.baud),
            parity: a.parity.map_or(ctx.board.parity, Into::into),
            flow: a.flow_control.map_or(ctx.board.flow_control, Into::into),
        });
        assistant::serve(
            &opts,
            (&ctx.store, &ctx.manifest),
            &mut serial,
            ear.as_ref(),
            api.as_ref(),
            &service,
        )
    };
    // Leave the LED off, not in whatever state it was in.
    if let Some((stop, thread)) = led {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    Ok(result?)
}

/// An explicit -c is held against the model's trained context before the
/// service starts (a default is cut to fit, as for every command).
fn check_ctx_size(ctx: &Ctx, m: &super::args::ModelArgs) -> anyhow::Result<()> {
    let Some(c) = m.ctx_size else {
        return Ok(());
    };
    let (_, path) = ctx.resolve(m.model.as_deref())?;
    let g = ferrite::gguf::GgufFile::open(&path)?;
    let train = g.summary().context_length.unwrap_or(0);
    if train > 0 && u64::from(c) > train {
        anyhow::bail!(
            "a context of {c} tokens is more than the {train} the model was trained on: use -c {train} or less"
        );
    }
    Ok(())
}

/// The status LED's thread and how to stop it.
type LedThread = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// The ear: audio (a microphone, or WAV files one after another with a
/// second of silence between), voice activity detection or push-to-talk,
/// whisper; and the status LED, when the board has one.
fn ear(ctx: &Ctx, e: &EarArgs, led: &mut Option<LedThread>) -> anyhow::Result<assistant::Ear> {
    let stt = ctx.transcriber(&e.speech)?;
    let source: Box<dyn AudioSource + Send> = if e.wav.is_empty() {
        let dev = e.device.clone().unwrap_or(ctx.board.audio_device.clone());
        Box::new(speech::capture::AlsaSource::open(&dev)?)
    } else {
        let mut all = Vec::new();
        for f in &e.wav {
            all.extend(speech::wav::read(f)?.to_pcm16k().0);
            all.extend(std::iter::repeat_n(0.0, speech::SAMPLE_RATE as usize));
        }
        let source = speech::WavSource::new(speech::Pcm16k(all));
        // With spoken answers, files arrive as a microphone would deliver
        // them, so a question does not barge in on the last answer early.
        Box::new(if e.speak { source.paced() } else { source })
    };
    let board_ptt = if e.wav.is_empty() {
        ctx.board.ptt_pin
    } else {
        None
    };
    let ptt_pin = e.ptt_pin.or(board_ptt);
    let ptt = ptt_pin.map(hw::button).transpose()?;
    if e.wav.is_empty() {
        let dev = e.device.as_deref().unwrap_or(&ctx.board.audio_device);
        match ptt_pin {
            Some(pin) => eprintln!("listening on {dev}: hold the button on GPIO {pin} and speak"),
            None => eprintln!("listening on {dev}: speak (a pause ends the question)"),
        }
    }
    let status = hw::StatusCell::default();
    if let Some(pin) = e.led_pin.or(ctx.board.led_pin) {
        match hw::led(pin) {
            Ok(pin) => {
                let stop = Arc::new(AtomicBool::new(false));
                let thread = hw::spawn_led(pin, status.clone(), stop.clone());
                *led = Some((stop, thread));
            }
            Err(err) if e.led_pin.is_none() => tracing::warn!(error = %err, "no status LED"),
            Err(err) => return Err(err.into()),
        }
    }
    let gate = ctx.speech_gate(&e.speech)?;
    let heard = speech::listen::spawn(source, stt, gate, e.speech.vad()?, ptt, status.clone());
    let mouth = if e.speak {
        let voice = ctx.voice(&e.voice)?;
        let dev = e
            .voice
            .audio_out
            .as_deref()
            .unwrap_or(&ctx.board.audio_out_device);
        let sink = ferrite::tts::playback::AlsaSink::open(dev, voice.sample_rate())?;
        let opts = e.voice.options()?;
        let speaker =
            ferrite::tts::speaker::Speaker::spawn(voice, Box::new(sink), opts, status.clone());
        speaker.set_barge_in(e.barge_in == super::args::OnOff::On);
        Some(speaker)
    } else {
        None
    };
    Ok(assistant::Ear {
        heard,
        status,
        mouth,
    })
}

/// Bind the HTTP API (its worker starts on each model the caller loads).
fn start_api(
    ctx: &Ctx,
    a: &ServeArgs,
    addr: std::net::SocketAddr,
    alone: bool,
) -> anyhow::Result<ferrite::http::Api> {
    let mut defaults = a.gen.params()?;
    defaults.beams = 0;
    let opts = ferrite::http::HttpOptions {
        addr,
        api_key: a.api_key.clone(),
        insecure_no_auth: a.insecure_no_auth,
        queue: a.http_queue as usize,
        max_body: 1 << 20,
        max_audio: 25 << 20,
        defaults,
        system: a.system.clone(),
        session: ctx.session_opts(&a.model, 0),
        parallel: a.parallel as usize,
        kv_unified: a.kv_unified == super::args::OnOff::On,
    };
    let speech = (http_stt(ctx, &a.ear.speech)?, http_tts(ctx, &a.ear.voice)?);
    let api = ferrite::http::Api::start(&opts, speech, alone)?;
    eprintln!(
        "ferrite: OpenAI-compatible API on http://{}/v1 (chat page: http://{0}/)",
        api.addr()
    );
    Ok(api)
}

/// `serve --http` alone: the OpenAI-compatible API on the loaded model. A
/// model split across boards (`--rpc`) whose server stops answering is
/// loaded again (`assistant::load_engine`: on the servers, else alone if it
/// fits, else when they are back) while the server keeps its port.
fn http(
    ctx: &Ctx,
    a: &ServeArgs,
    addr: std::net::SocketAddr,
    service: &super::service::Systemd,
) -> anyhow::Result<()> {
    use ferrite::assistant::Service as _;
    let mut engine = ctx.load(&a.model)?;
    // Ctrl-C stops it as SIGTERM does (the worker's grace, then a cut), not
    // through the server's own graceful shutdown, which would wait for every
    // stream to end; a second Ctrl-C ends the process at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        interrupted.clone(),
    );
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    let api = start_api(ctx, a, addr, false)?;
    service.status(&format!("serving the HTTP API on {}", api.addr()));
    service.ready();
    loop {
        if !http_on(ctx, a, &api, &mut engine, (service, &interrupted))? {
            return Ok(api.shutdown()?);
        }
        tracing::warn!(model = %engine.name(), "an --rpc server stopped answering: loading the model again");
        let (name, path) = (engine.name().to_string(), engine.path().to_path_buf());
        let opts = ctx.serve_options(None, &a.model, &a.gen, &a.draft, a.system.clone())?;
        drop(engine);
        engine = ferrite::assistant::load_engine(&opts, &name, &path)?;
    }
}

/// The HTTP worker on `engine` until the server is done (`Ok(false)`) or an
/// `--rpc` server holding some of its layers stopped answering (`Ok(true)`:
/// load it again).
fn http_on(
    ctx: &Ctx,
    a: &ServeArgs,
    api: &ferrite::http::Api,
    engine: &mut ferrite::llm::Engine,
    (service, interrupted): (&super::service::Systemd, &AtomicBool),
) -> anyhow::Result<bool> {
    use ferrite::assistant::Service as _;
    let adapters = if ctx.store.adapters().is_empty() {
        Vec::new()
    } else {
        let sha = ctx.store.model_sha256(engine.name(), engine.path())?;
        ferrite::http::load_store_adapters(engine, &ctx.store, &sha)
    };
    let default_adapter = a
        .lora
        .as_deref()
        .map(|spec| ctx.load_lora(engine, spec))
        .transpose()?;
    let engine = &*engine;
    let served = ferrite::http::Served::new(engine.name(), adapters, default_adapter);
    a.draft.options().validate()?;
    let draft_model = ctx.load_draft(&a.draft, &a.model)?;
    let draft = (a.draft.lookup || draft_model.is_some())
        .then(|| (draft_model.as_ref(), a.draft.options()));
    let prompt_cache = if a.prompt_cache {
        let sha = ctx.store.model_sha256(engine.name(), engine.path())?;
        Some(ferrite::llm::PromptCache::new(
            &ctx.store.root().join("prompt-cache"),
            &sha,
        )?)
    } else {
        None
    };
    let speed = ferrite::http::Speedups {
        draft,
        prompt_cache,
    };
    let quit = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| api.work(engine, speed, served, &quit));
        // systemd's side, until the server is done: the watchdog fed,
        // SIGTERM (and Ctrl-C) turned into a stop.
        let mut lost = false;
        while !api.finished() && !service.stopping() && !interrupted.load(Ordering::Relaxed) {
            service.heartbeat();
            std::thread::sleep(std::time::Duration::from_millis(200));
            lost = engine.remote_lost();
            if lost {
                break;
            }
        }
        // The worker first: answers still streaming get its grace, then
        // are cut, so the server's graceful shutdown does not wait on them.
        quit.store(true, Ordering::Relaxed);
        Ok(lost)
    })
}

/// Whisper for `/v1/audio/transcriptions`, when its model is in the store
/// (a server does not download one on its own: `models pull` does).
fn http_stt(
    ctx: &Ctx,
    speech: &super::args::SpeechArgs,
) -> anyhow::Result<Option<ferrite::http::Stt>> {
    let Ok((name, _)) = ctx
        .store
        .resolve(Some(&speech.whisper), &ctx.manifest, false)
    else {
        tracing::info!(
            whisper = %speech.whisper,
            "no speech model in the store: /v1/audio/transcriptions is off"
        );
        return Ok(None);
    };
    Ok(Some(ferrite::http::Stt {
        name,
        language: speech.language.clone(),
        transcriber: std::sync::Mutex::new(ctx.transcriber(speech)?),
    }))
}

/// The voice for `/v1/audio/speech`: `--voice` when it is espeak-ng's, or
/// a Piper voice whose model and ONNX Runtime are already in the store (a
/// server does not download them on its own: `models pull` does). It is
/// loaded on the first request, so a server nobody asks to speak does not
/// hold a voice in memory.
fn http_tts(ctx: &Ctx, v: &super::args::VoiceArgs) -> anyhow::Result<Option<ferrite::http::Tts>> {
    let opts = v.options()?;
    let load: ferrite::http::LoadVoice = if v.voice == "espeak" || v.voice.starts_with("espeak:") {
        let name = v
            .voice
            .strip_prefix("espeak:")
            .unwrap_or("en-us")
            .to_string();
        Box::new(move || {
            let voice = ferrite::tts::fallback::EspeakVoice::new(&name)?;
            Ok(Box::new(voice) as Box<dyn ferrite::tts::Voice>)
        })
    } else {
        let have = |name: &str| ctx.store.resolve(Some(name), &ctx.manifest, false).ok();
        let (Some((_, onnx)), Some((_, rt))) =
            (have(&v.voice), have(&ferrite::tts::runtime::model_name()))
        else {
            tracing::info!(
                voice = %v.voice,
                "the voice or ONNX Runtime is not in the store: /v1/audio/speech is off"
            );
            return Ok(None);
        };
        let threads = v
            .tts_threads
            .map_or_else(|| ctx.board.threads() as usize, |t| t as usize);
        Box::new(move || {
            ferrite::tts::runtime::init(&rt)?;
            let voice = ferrite::tts::PiperVoice::load(&onnx, threads)?;
            Ok(Box::new(voice) as Box<dyn ferrite::tts::Voice>)
        })
    };
    Ok(Some(ferrite::http::Tts::new(&v.voice, opts, load)))
}
