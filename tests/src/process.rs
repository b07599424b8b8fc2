//! Child processes that cannot outlive their test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::poll_until;

/// A spawned process that is killed (SIGKILL) and reaped when dropped, also
/// when the test panics.
pub struct ChildGuard {
    child: Child,
    what: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd`; `what` names the process in panic messages.
    pub fn spawn(what: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
        ChildGuard::new(what, child)
    }

    /// Guards an already spawned `child`.
    pub fn new(what: &str, child: Child) -> ChildGuard {
        ChildGuard {
            child,
            what: what.to_string(),
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig`, unless the process has already been reaped (its pid may
    /// belong to someone else by now).
    pub fn signal(&self, sig: Signal) {
        if self.status.is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} to {}: {e}", self.what));
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait for {}: {e}", self.what));
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, Duration::from_millis(10), || self.try_wait())
    }

    /// SIGKILL and reap; returns the exit status. Does nothing more if the
    /// process had already exited.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.child.kill();
        let s = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.what));
        self.status = Some(s);
        s
    }

    /// The underlying child, e.g. to take its piped stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What the process is, as given to [`ChildGuard::spawn`].
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of the file at `path` (or a note that it is unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({} unreadable: {e})", path.display()),
    }
}

/// Opens `path` for appending (creating it), for a server's stdout and stderr.
pub(crate) fn append_log(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// `name` on `PATH`, else in `/usr/sbin` or `/sbin` (Debian puts `mosquitto`
/// there, outside a normal user's `PATH`); panics naming the Debian package.
pub fn program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found: apt-get install {package} (scripts/test does)")
        })
}

/// How long a server's start may take before the test fails (most start in
/// well under a second on an idle machine; the 2-core CI box runs several
/// suites at once).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns the server `cmd` (`what` in messages) with stdout and stderr
/// appended to `log`, and polls `GET ready_url` until it answers `status`.
/// On failure the child is killed and the error says why.
pub(crate) fn launch_http(
    what: &str,
    cmd: &mut Command,
    log: &Path,
    http: &reqwest::blocking::Client,
    ready_url: &str,
    status: u16,
) -> Result<ChildGuard, String> {
    let out = append_log(log);
    let mut child = ChildGuard::spawn(
        what,
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log file"))
            .stderr(out),
    );
    let awaited = format!("{what} to answer GET {ready_url} with {status}");
    let ready = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
        if let Some(exit) = child.try_wait() {
            return Some(Err(format!(
                "{what} exited ({exit}) while waiting for {awaited}"
            )));
        }
        let r = http.get(ready_url).timeout(Duration::from_secs(2)).send();
        r.is_ok_and(|r| r.status().as_u16() == status)
            .then_some(Ok(()))
    });
    match ready {
        Some(Ok(())) => Ok(child),
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "timed out after {START_TIMEOUT:?} waiting for {awaited}"
        )),
    }
}

/// SIGTERM to a server and wait for it to exit; panics with its log if it
/// does not within [`START_TIMEOUT`].
pub(crate) fn shut_down(child: &mut ChildGuard, log: &Path) {
    child.signal(Signal::SIGTERM);
    if child.wait_timeout(START_TIMEOUT).is_none() {
        fail(&format!("{} did not exit on SIGTERM", child.what()), log);
    }
}

/// Whether the server whose log is `log` failed because its port was taken
/// (between [`crate::free_port`] and its bind).
pub(crate) fn port_taken(log: &Path) -> bool {
    tail(log, 40)
        .to_lowercase()
        .contains("address already in use")
}

/// Panics with `e` and the tail of `log`.
pub(crate) fn fail(e: &str, log: &Path) -> ! {
    panic!("{e}\n--- tail of {} ---\n{}", log.display(), tail(log, 40))
}

/// Starts a server on a free port: `launch(port)` up to three times while
/// the failure was a port taken meanwhile; panics with the log otherwise.
pub(crate) fn start_on_free_port(
    what: &str,
    log: &Path,
    mut launch: impl FnMut(u16) -> Result<ChildGuard, String>,
) -> (ChildGuard, u16) {
    for attempt in 1.. {
        let port = crate::free_port();
        match launch(port) {
            Ok(child) => return (child, port),
            Err(e) if attempt < 3 && port_taken(log) => {
                eprintln!("{what}: {e}; retrying with another port");
            }
            Err(e) => fail(&e, log),
        }
    }
    unreachable!("the loop returns or panics")
}
