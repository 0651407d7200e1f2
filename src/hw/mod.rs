//! GPIO seams: the push-to-talk button and the status LED, as
//! `embedded_hal::digital` pins.
//!
//! On a Raspberry Pi (feature `rpi`) the pins come from rppal; elsewhere (and
//! in tests) from the fakes here: a `ScriptedPin` that plays back a sequence
//! of levels and a `RecordingPin` that remembers what it was set to. The LED
//! shows the assistant's `Status` from its own thread: off when idle, on while
//! listening to an utterance, blinking while thinking (transcribing or
//! answering).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

/// A push-to-talk button, boxed for threads.
pub type Button = Box<dyn InputPin<Error = Infallible> + Send>;
/// A status LED, boxed for threads.
pub type Led = Box<dyn OutputPin<Error = Infallible> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum HwError {
    #[error("GPIO {pin}: {msg}")]
    Gpio { pin: u8, msg: String },
    #[error("GPIO pins need a build with `--features rpi` (Raspberry Pi); this build has none")]
    NotCompiled,
}

/// What the assistant is doing, for the LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Idle = 0,
    Listening = 1,
    Thinking = 2,
    /// An answer is being spoken.
    Speaking = 3,
}

/// The status shared between the speech thread, the assistant and the LED.
#[derive(Clone, Default)]
pub struct StatusCell(Arc<AtomicU8>);

impl StatusCell {
    pub fn set(&self, s: Status) {
        self.0.store(s as u8, Ordering::Relaxed);
    }

    /// Set `to` if the status is one of `from`, in one atomic step (the
    /// ear, the assistant and the speaker all write it); true if it was set.
    pub fn transition(&self, from: &[Status], to: Status) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                from.iter().any(|f| *f as u8 == cur).then_some(to as u8)
            })
            .is_ok()
    }

    pub fn get(&self) -> Status {
        match self.0.load(Ordering::Relaxed) {
            1 => Status::Listening,
            2 => Status::Thinking,
            3 => Status::Speaking,
            _ => Status::Idle,
        }
    }
}

/// Drive `led` from `status` until `stop` is set: off (idle), on
/// (listening), 4 Hz blinking (thinking) or 1 Hz blinking (speaking).
pub fn spawn_led(
    mut led: Led,
    status: StatusCell,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("status-led".into())
        .spawn(move || {
            let mut phase = false;
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick = tick.wrapping_add(1);
                let on = match status.get() {
                    Status::Idle => false,
                    Status::Listening => true,
                    Status::Thinking => {
                        phase = !phase;
                        phase
                    }
                    Status::Speaking => tick % 8 < 4,
                };
                let _ = if on { led.set_high() } else { led.set_low() };
                std::thread::sleep(Duration::from_millis(125));
            }
            let _ = led.set_low();
        })
        .expect("spawn LED thread")
}

/// An input pin that plays back levels, one per read, then holds the last.
pub struct ScriptedPin {
    levels: VecDeque<bool>,
    last: bool,
}

impl ScriptedPin {
    /// `true` = high. A button wired to ground with a pull-up reads low
    /// while pressed.
    pub fn new(levels: impl IntoIterator<Item = bool>) -> ScriptedPin {
        ScriptedPin {
            levels: levels.into_iter().collect(),
            last: true,
        }
    }
}

impl ErrorType for ScriptedPin {
    type Error = Infallible;
}

impl InputPin for ScriptedPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        if let Some(l) = self.levels.pop_front() {
            self.last = l;
        }
        Ok(self.last)
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

/// An output pin that records every level it is set to.
#[derive(Clone, Default)]
pub struct RecordingPin(pub Arc<Mutex<Vec<bool>>>);

impl ErrorType for RecordingPin {
    type Error = Infallible;
}

impl OutputPin for RecordingPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.lock().expect("pin log").push(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.lock().expect("pin log").push(true);
        Ok(())
    }
}

#[cfg(feature = "rpi")]
mod rpi {
    use super::*;

    /// rppal's pins report rppal errors; reading a configured pin cannot
    /// fail, so they are wrapped into infallible ones.
    struct Infallibly<P>(P);

    impl<P> ErrorType for Infallibly<P> {
        type Error = Infallible;
    }

    impl InputPin for Infallibly<rppal::gpio::InputPin> {
        fn is_high(&mut self) -> Result<bool, Infallible> {
            Ok(self.0.is_high())
        }
        fn is_low(&mut self) -> Result<bool, Infallible> {
            Ok(self.0.is_low())
        }
    }

    impl OutputPin for Infallibly<rppal::gpio::OutputPin> {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.set_low();
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.set_high();
            Ok(())
        }
    }

    fn gpio(pin: u8) -> Result<rppal::gpio::Pin, HwError> {
        let err = |e: rppal::gpio::Error| HwError::Gpio {
            pin,
            msg: format!("{e} (is the user in the `gpio` group?)"),
        };
        rppal::gpio::Gpio::new().map_err(err)?.get(pin).map_err(err)
    }

    pub fn button(pin: u8) -> Result<Button, HwError> {
        Ok(Box::new(Infallibly(gpio(pin)?.into_input_pullup())))
    }

    pub fn led(pin: u8) -> Result<Led, HwError> {
        Ok(Box::new(Infallibly(gpio(pin)?.into_output_low())))
    }
}

/// The board's push-to-talk button (BCM numbering, pulled up, pressed = low).
pub fn button(pin: u8) -> Result<Button, HwError> {
    #[cfg(feature = "rpi")]
    return rpi::button(pin);
    #[cfg(not(feature = "rpi"))]
    {
        let _ = pin;
        Err(HwError::NotCompiled)
    }
}

/// The board's status LED (BCM numbering, active high).
pub fn led(pin: u8) -> Result<Led, HwError> {
    #[cfg(feature = "rpi")]
    return rpi::led(pin);
    #[cfg(not(feature = "rpi"))]
    {
        let _ = pin;
        Err(HwError::NotCompiled)
    }
}
