//! `ferrite transcribe`: a WAV file to text with whisper.cpp.

use std::io::Write;

use super::args::TranscribeArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: TranscribeArgs, out: &mut Out) -> anyhow::Result<()> {
    let mut speech = a.speech;
    speech.whisper = a.model.unwrap_or(speech.whisper);
    speech.stt_threads = a.threads.or(speech.stt_threads);
    let vad = speech.vad()?;
    let wav = ferrite::speech::wav::read(&a.file)?;
    let pcm = wav.to_pcm16k();
    let stt = ctx.transcriber(&speech)?;
    let mut gate = if a.no_vad {
        None
    } else {
        ctx.speech_gate(&speech)?
    };
    let audio_s = pcm.seconds();
    let pieces = if a.no_vad {
        vec![pcm]
    } else {
        ferrite::speech::Vad::split(vad, &pcm)
    };
    let mut texts = Vec::new();
    let mut compute = 0.0;
    let mut gated = 0;
    for p in &pieces {
        if let Some(g) = gate.as_mut() {
            if !g.holds_speech(p)? {
                gated += 1;
                continue;
            }
        }
        let t = stt.transcribe(p)?;
        compute += t.compute_s;
        if !t.text.is_empty() {
            texts.push(t.text);
        }
    }
    writeln!(out, "{}", texts.join(" "))?;
    if texts.is_empty() {
        // The empty line is the transcript (scripts read it); this says why.
        let why = match (a.no_vad, gated) {
            (true, _) => "whisper heard no words".to_string(),
            (false, 0) => format!(
                "{} stretch(es) of sound, in which whisper heard no words",
                pieces.len()
            ),
            (false, g) => format!(
                "{} stretch(es) of sound, {g} judged not speech (-v says by which detector), no words in the rest",
                pieces.len()
            ),
        };
        eprintln!("no speech in {}: {why}", a.file.display());
    }
    if a.stats {
        eprintln!(
            "audio {audio_s:.2} s | {} utterance(s) | compute {compute:.2} s | real-time factor {:.3}",
            pieces.len(),
            compute / audio_s.max(1e-9)
        );
    }
    Ok(())
}
