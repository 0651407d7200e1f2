//! A serial port as a console link, opened with the `serialport` crate: a
//! UART on the GPIO header, a USB gadget port, a USB-serial adapter, or a
//! pseudo-terminal (which is how the tests drive it).
//!
//! Raw mode, 8 data bits, 1 stop bit; baud, parity and flow control from the
//! board profile or flags. In raw mode a BREAK condition reads as a NUL byte,
//! which the loop treats like Ctrl-C during an answer.

use std::io::{ErrorKind, Write};
use std::time::Duration;

use serialport::{DataBits, SerialPort, StopBits};

use super::{Connector, Link};
use crate::board::{FlowControl, Parity};

#[derive(Debug, Clone)]
pub struct SerialSettings {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub flow: FlowControl,
}

pub struct Serial {
    settings: SerialSettings,
}

impl Serial {
    pub fn new(settings: SerialSettings) -> Self {
        Serial { settings }
    }
}

/// How long a read or write waits before the thread looks around again.
const POLL: Duration = Duration::from_millis(200);

/// Writes that wait out flow control instead of failing on a timeout; the
/// writer thread is the only one that ever waits on a stalled terminal.
struct PortWriter(Box<dyn SerialPort>);

impl Write for PortWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == ErrorKind::TimedOut => continue,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == ErrorKind::TimedOut => Ok(()),
            other => other,
        }
    }
}

impl Connector for Serial {
    fn open(&mut self) -> std::io::Result<Link> {
        let s = &self.settings;
        let port = serialport::new(&s.path, s.baud)
            .data_bits(DataBits::Eight)
            .stop_bits(StopBits::One)
            .parity(match s.parity {
                Parity::None => serialport::Parity::None,
                Parity::Odd => serialport::Parity::Odd,
                Parity::Even => serialport::Parity::Even,
            })
            .flow_control(match s.flow {
                FlowControl::None => serialport::FlowControl::None,
                FlowControl::Software => serialport::FlowControl::Software,
                FlowControl::Hardware => serialport::FlowControl::Hardware,
            })
            .timeout(POLL)
            .open()
            .map_err(|e| not_a_port(&s.path, e.into()))?;
        let reader = port.try_clone().map_err(std::io::Error::from)?;
        Ok(Link {
            reader: Box::new(reader),
            writer: Box::new(PortWriter(port)),
            crlf: true,
        })
    }

    fn describe(&self) -> String {
        format!("{} at {} baud", self.settings.path, self.settings.baud)
    }

    fn reopens(&self) -> bool {
        true
    }
}

/// An open failure that waiting cannot fix (a regular file, `/dev/null`: not
/// a terminal) becomes `InvalidInput` with what is wrong; anything else (the
/// device not there yet, a permission udev has not granted yet) stays as it
/// is, and the console waits for the port.
fn not_a_port(path: &str, e: std::io::Error) -> std::io::Error {
    use std::io::IsTerminal;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // Linux's O_NONBLOCK | O_NOCTTY (the same on x86_64, aarch64 and armv7):
    // probing must neither wait for a modem's carrier nor take the terminal.
    const PROBE_FLAGS: i32 = 0o4000 | 0o400;
    let not_char = std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_char_device());
    let not_tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(PROBE_FLAGS)
            .open(path)
            .is_ok_and(|f| !f.is_terminal())
    };
    if not_char || not_tty() {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{path} is not a serial port (a terminal device such as /dev/ttyUSB0 or /dev/serial0): {e}"),
        )
    } else {
        e
    }
}
