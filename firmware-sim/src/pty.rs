//! A pseudo-terminal owned by the simulator: the master side is ours, the
//! slave side (`/dev/pts/N`) is what the agent opens as its serial port.
//!
//! What Linux does (measured on 6.x, see the tests):
//! - before the slave has ever been opened, poll() on the master shows no
//!   POLLHUP, and writes are buffered for the first opener;
//! - once the last slave descriptor is closed, the master polls POLLHUP
//!   until the slave is opened again;
//! - writes to the master do *not* fail while nobody has the slave open: up
//!   to ~16 KiB is buffered (then EAGAIN) and handed to the next opener,
//!   partial lines included;
//! - closing the master hangs the slave up: its reads return end-of-file
//!   and any bytes it had not read yet are dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios;

/// The master side of a PTY, in raw mode. Dropping it closes the master,
/// which the reader sees as a hang-up (an unplugged USB adapter).
pub struct Pty {
    master: PtyMaster,
    slave: PathBuf,
}

/// A write that stopped before the end of its buffer.
#[derive(Debug)]
pub struct PartialWrite {
    /// Bytes written before it stopped.
    pub written: usize,
    /// Why it stopped (`Interrupted` when asked to stop).
    pub error: io::Error,
}

impl Pty {
    /// Opens a new PTY; the slave starts in raw mode (no echo, no CR/LF
    /// translation), as a microcontroller's UART would appear.
    pub fn open() -> io::Result<Pty> {
        // Non-blocking, so a reader that stops reading cannot wedge us past
        // a stop request.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = PathBuf::from(ptsname_r(&master)?);
        // The line discipline settings are shared by both sides, so raw here
        // means the slave opens raw.
        let mut t = termios::tcgetattr(master.as_fd())?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(master.as_fd(), termios::SetArg::TCSANOW, &t)?;
        // The master shows POLLHUP only after a slave has been opened and
        // closed; do that once so "nobody has it open" is visible from the
        // start. No slave descriptor is kept: it would hide the reader's.
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(&slave)?,
        );
        Ok(Pty { master, slave })
    }

    /// The path the agent opens.
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// Waits up to `timeout` for some process to have the slave open; true
    /// if one has. Returns at once if it already is.
    pub fn wait_opened(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.hung_up()? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // POLLHUP is level-triggered, so poll() cannot wait for it to
            // clear: check every few milliseconds instead.
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    /// True while no process has the slave open (POLLHUP on the master).
    pub fn hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::ZERO)?;
        Ok(fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)))
    }

    /// Writes all of `buf`, waiting while the reader is slow (or gone with
    /// the kernel buffer full); gives up when `stop` is set or a write fails,
    /// saying how much was written.
    pub fn write_all(&self, buf: &[u8], stop: &AtomicBool) -> Result<(), PartialWrite> {
        let mut written = 0;
        while written < buf.len() {
            if stop.load(Ordering::Relaxed) {
                return Err(PartialWrite {
                    written,
                    error: io::Error::new(io::ErrorKind::Interrupted, "asked to stop"),
                });
            }
            match nix::unistd::write(&self.master, &buf[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
                    let hup = match poll(&mut fds, PollTimeout::from(100u16)) {
                        Ok(_) => fds[0]
                            .revents()
                            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
                        Err(e) => {
                            return Err(PartialWrite {
                                written,
                                error: e.into(),
                            })
                        }
                    };
                    // POLLHUP makes poll() return at once even though nothing
                    // can be written: sleep instead of spinning.
                    if hup {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(e) => {
                    return Err(PartialWrite {
                        written,
                        error: e.into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads and drops whatever the reader wrote to us, so a chatty reader
    /// never blocks on a full buffer.
    pub fn discard_input(&self) {
        let mut buf = [0u8; 1024];
        while let Ok(n) = nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Bytes written that the reader has not read yet, if that can be
    /// told: the master cannot say (its TIOCOUTQ is always 0), so this opens
    /// the slave for a moment and asks FIONREAD there. `None` when the slave
    /// cannot be opened (a reader holding it with TIOCEXCL, without root).
    pub fn unread(&self) -> io::Result<Option<usize>> {
        let slave = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&self.slave)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(n.max(0) as usize))
    }

    /// Waits up to `timeout` (or until `stop`) for the reader to have read
    /// everything written; true if it has. Used before an unplug, which
    /// would drop unread bytes and make the ledger overstate what arrived.
    ///
    /// Bytes just written pass through the kernel's flip buffer (a work
    /// queue) before FIONREAD counts them, so "empty" must hold for a while
    /// (100 ms) to be believed; on a badly overloaded machine that can still
    /// be wrong, and the reader then loses the tail, as with a real unplug.
    pub fn wait_drained(&self, timeout: Duration, stop: &AtomicBool) -> io::Result<bool> {
        const STEADY: Duration = Duration::from_millis(100);
        let deadline = Instant::now() + timeout;
        let mut empty_since: Option<Instant> = None;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            match self.unread()? {
                Some(0) => {
                    let since = *empty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STEADY {
                        return Ok(true);
                    }
                }
                Some(_) => empty_since = None,
                None => {
                    // Cannot look: give the reader a moment instead.
                    std::thread::sleep(Duration::from_millis(200));
                    return Ok(false);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    /// The raw master descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn open_slave(pty: &Pty) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(pty.slave_path())
            .unwrap()
    }

    #[test]
    fn detects_the_reader_and_delivers_raw_bytes() {
        let pty = Pty::open().unwrap();
        assert!(pty.hung_up().unwrap(), "nobody has the slave open yet");
        let t = Instant::now();
        assert!(!pty.wait_opened(Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut slave = open_slave(&pty);
        assert!(pty.wait_opened(Duration::ZERO).unwrap());
        let stop = AtomicBool::new(false);
        // Raw: no CR added, no echo back to the master.
        pty.write_all(b"a=1\r\nb=2\n", &stop).unwrap();
        let mut buf = [0u8; 9];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"a=1\r\nb=2\n");
        let mut echo = [0u8; 16];
        assert!(
            nix::unistd::read(pty.raw_fd(), &mut echo).is_err(),
            "no echo"
        );
        // What the reader writes is drained, not left to fill a buffer.
        slave.write_all(b"hello\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        pty.discard_input();
        assert!(nix::unistd::read(pty.raw_fd(), &mut echo).is_err());
        // A second opener keeps it open until both are gone.
        let second = open_slave(&pty);
        drop(slave);
        assert!(!pty.hung_up().unwrap(), "still open by the second");
        drop(second);
        assert!(pty.hung_up().unwrap(), "the reader went away");
        // Reopening is seen again.
        let _again = open_slave(&pty);
        assert!(pty.wait_opened(Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn wait_opened_sees_a_late_opener() {
        let pty = Pty::open().unwrap();
        let path = pty.slave_path().to_path_buf();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            drop(f);
        });
        assert!(pty.wait_opened(Duration::from_secs(5)).unwrap());
        opener.join().unwrap();
        assert!(pty.hung_up().unwrap());
    }

    #[test]
    fn writes_without_a_reader_block_instead_of_failing_or_spinning() {
        let pty = Pty::open().unwrap();
        let stop = AtomicBool::new(false);
        let big = vec![b'x'; 256 * 1024];
        std::thread::scope(|s| {
            let w = s.spawn(|| pty.write_all(&big, &stop));
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            let err = w.join().unwrap().unwrap_err();
            assert_eq!(err.error.kind(), io::ErrorKind::Interrupted);
            // The kernel buffered some for the next reader, not all.
            assert!(
                err.written > 0 && err.written < big.len(),
                "{}",
                err.written
            );
        });
    }

    #[test]
    fn counts_what_the_reader_has_not_read() {
        let pty = Pty::open().unwrap();
        let mut slave = open_slave(&pty);
        let stop = AtomicBool::new(false);
        pty.write_all(&[b'x'; 1000], &stop).unwrap();
        // Counted once the kernel's work queue has moved it to the slave.
        let t = Instant::now();
        while pty.unread().unwrap() != Some(1000) {
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", pty.unread());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!pty.wait_drained(Duration::from_millis(150), &stop).unwrap());
        let mut buf = [0u8; 1000];
        slave.read_exact(&mut buf).unwrap();
        assert!(pty.wait_drained(Duration::from_secs(1), &stop).unwrap());
        // Looking did not count as a reader leaving.
        assert!(!pty.hung_up().unwrap());
    }

    #[test]
    fn closing_the_master_hangs_up_the_reader() {
        let pty = Pty::open().unwrap();
        let path = pty.slave_path().to_path_buf();
        let mut slave = open_slave(&pty);
        drop(pty);
        let mut buf = [0u8; 8];
        // End of file or EIO, depending on timing: never data, never a hang.
        match slave.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        }
        assert!(!path.exists(), "the device node goes with the master");
    }
}
