//! stdin/stdout as a console link (`ferrite serve --stdio`): the same loop as
//! a serial port, for pipes, scripts, `socat` and systemd sockets. End of
//! input ends the service.

use super::{Connector, Link};

pub struct Stdio {
    opened: bool,
}

impl Stdio {
    pub fn new() -> Self {
        Stdio { opened: false }
    }
}

impl Default for Stdio {
    fn default() -> Self {
        Self::new()
    }
}

impl Connector for Stdio {
    fn open(&mut self) -> std::io::Result<Link> {
        if std::mem::replace(&mut self.opened, true) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stdin is closed",
            ));
        }
        Ok(Link {
            reader: Box::new(std::io::stdin()),
            writer: Box::new(std::io::stdout()),
            crlf: false,
        })
    }

    fn describe(&self) -> String {
        "stdio".into()
    }

    fn reopens(&self) -> bool {
        false
    }
}
