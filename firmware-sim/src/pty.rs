//! A pseudo-terminal owned by the simulator: the master side is ours, the
//! slave side (`/dev/pts/N`) is what the agent opens as its serial port.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios;

/// The master side of a PTY, in raw mode.
pub struct Pty {
    master: PtyMaster,
    slave: PathBuf,
}

impl Pty {
    /// Opens a new PTY; the slave starts in raw mode (no echo, no CR/LF
    /// translation), as a microcontroller's UART would appear.
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = PathBuf::from(ptsname_r(&master)?);
        let mut t = termios::tcgetattr(master.as_fd())?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(master.as_fd(), termios::SetArg::TCSANOW, &t)?;
        // Linux raises POLLHUP on the master only once a slave has been opened
        // and closed; open and close it once so "nobody has it open" is visible
        // from the start.
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&slave)?,
        );
        Ok(Pty { master, slave })
    }

    /// The path the agent opens.
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// Waits up to `timeout` for some process to open the slave. Linux reports
    /// POLLHUP on the master while no process has the slave open.
    pub fn wait_opened(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.hung_up()? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while no process has the slave open.
    pub fn hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::ZERO)?;
        Ok(fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)))
    }

    /// Writes all of `buf`, waiting while the reader is slow; gives up when
    /// `stop` is set or the write fails (the reader is gone for good).
    pub fn write_all(&self, mut buf: &[u8], stop: &AtomicBool) -> io::Result<()> {
        while !buf.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
            }
            match nix::unistd::write(&self.master, buf) {
                Ok(n) => buf = &buf[n..],
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                    let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
                    poll(&mut fds, PollTimeout::from(100u16))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The raw master descriptor (for tests).
    pub fn raw_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn detects_the_reader_and_delivers_lines() {
        let pty = Pty::open().unwrap();
        assert!(pty.hung_up().unwrap(), "nobody has the slave open yet");
        assert!(!pty.wait_opened(Duration::from_millis(50)).unwrap());
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.slave_path())
            .unwrap();
        assert!(pty.wait_opened(Duration::from_secs(1)).unwrap());
        let stop = AtomicBool::new(false);
        pty.write_all(b"a=1\nb=2\n", &stop).unwrap();
        let mut buf = [0u8; 8];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"a=1\nb=2\n");
        drop(slave);
        assert!(pty.hung_up().unwrap(), "the reader went away");
    }
}
