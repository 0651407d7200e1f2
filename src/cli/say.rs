//! `ferrite say`: text to speech with a Piper voice, played sentence by
//! sentence as each is made (or written to a WAV file with `-o`).

use std::io::{Read, Write};
use std::sync::mpsc;

use ferrite::tts::playback::{AlsaSink, AudioSink, MemorySink};
use ferrite::tts::Audio;

use super::args::SayArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: SayArgs, out: &mut Out) -> anyhow::Result<()> {
    let text = if a.text == ["-"] {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        a.text.join(" ")
    };
    if text.trim().is_empty() {
        anyhow::bail!("nothing to say: the text is empty");
    }
    let opts = a.voice.options()?;
    let mut voice = ctx.voice(&a.voice)?;
    let (audio_s, compute_s) = match &a.output {
        Some(path) => {
            let mut sink = MemorySink::default();
            let spoken = voice.speak_each(&text, &opts, &mut |s| sink.play(s).is_ok())?;
            if sink.audio.samples.is_empty() {
                anyhow::bail!("nothing to say: the text holds no words");
            }
            ferrite::speech::wav::write_mono(path, voice.sample_rate(), &sink.audio.samples)?;
            spoken
        }
        None => {
            // Play on a thread so the next sentence is made while this one
            // is heard.
            let dev = a
                .voice
                .audio_out
                .as_deref()
                .unwrap_or(&ctx.board.audio_out_device);
            let mut sink = AlsaSink::open(dev, voice.sample_rate())?;
            let (tx, rx) = mpsc::sync_channel::<Audio>(2);
            let player = std::thread::spawn(move || -> anyhow::Result<()> {
                for s in rx {
                    sink.play(&s)?;
                }
                sink.drain();
                Ok(())
            });
            let spoken = voice.speak_each(&text, &opts, &mut |s| tx.send(s.clone()).is_ok());
            drop(tx);
            player
                .join()
                .map_err(|_| anyhow::anyhow!("the playback thread panicked"))??;
            spoken?
        }
    };
    if let Some(path) = &a.output {
        writeln!(out, "{}", path.display())?;
    }
    if a.stats {
        eprintln!(
            "audio {audio_s:.2} s | compute {compute_s:.2} s | real-time factor {:.3}",
            compute_s / audio_s.max(1e-9)
        );
    }
    Ok(())
}
