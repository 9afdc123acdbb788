//! Binary upgrade on SIGUSR2, as nginx does it.
//!
//! The running process starts the binary at its own path, as that file is now,
//! with the same arguments, and hands it every listening socket (their numbers
//! in [`handover::LISTEN_FDS_VAR`]) and one end of a socket pair
//! ([`READY_FD_VAR`]). The new process writes to that end once it serves
//! ([`announce_ready`]); only then does the old one stop accepting and drain.
//! The sockets are the same kernel objects in both processes, so a connection
//! is never refused: whichever process accepts it, serves it.
//!
//! A new process that cannot start (a broken binary), exits (a bad config) or
//! is not ready within [`READY_TIMEOUT`] (it is killed) changes nothing: the
//! old process goes on serving and logs why.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::handover;

/// The descriptor on which a process started by an upgrade says it is ready.
pub const READY_FD_VAR: &str = "SNIROUTE_READY_FD";

/// How long a new process may take to be ready before it is given up on.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the running process was started, captured at start: by the time of an
/// upgrade the binary may have been replaced, and `/proc/self/exe` then names
/// the old, deleted file.
#[derive(Debug, Clone)]
pub struct Invocation {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Invocation {
    pub fn current() -> std::io::Result<Invocation> {
        Ok(Invocation {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// The binary an upgrade starts.
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }
}

/// Why an upgrade did not happen. The running process serves on regardless.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {exe}: {error}")]
    Spawn { exe: String, error: std::io::Error },
    #[error("cannot make the readiness channel for the new process: {0}")]
    Channel(std::io::Error),
    #[error("the new process (pid {pid}) exited with {status} before it was ready; its log lines above say why")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) was not ready within {READY_TIMEOUT:?}; killed it")]
    TimedOut { pid: u32 },
}

/// A new process that has said it is ready; it serves from now on.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
}

/// Starts `invocation` with `sockets` and waits until it is ready.
pub async fn start(
    invocation: &Invocation,
    sockets: &[BorrowedFd<'_>],
) -> Result<Successor, UpgradeError> {
    let (ours, theirs) = StdUnixStream::pair().map_err(UpgradeError::Channel)?;
    let theirs = OwnedFd::from(theirs);
    let mut inherit: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let listen_fds = inherit
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    inherit.push(theirs.as_raw_fd());

    let mut command = Command::new(&invocation.exe);
    command
        .args(&invocation.args)
        .env(handover::LISTEN_FDS_VAR, listen_fds)
        .env(READY_FD_VAR, theirs.as_raw_fd().to_string())
        // systemd's sockets were for this process only.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe;
    // it clears close-on-exec on exactly the descriptors handed over.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|error| UpgradeError::Spawn {
        exe: invocation.exe.display().to_string(),
        error,
    })?;
    let mut starting = Starting {
        child,
        ready: false,
    };
    // Our copy of the child's end must go, or its exit would not end the read.
    drop(theirs);
    let pid = starting.child.id().unwrap_or_default();
    tracing::info!(pid, exe = %invocation.exe.display(), "upgrade: started the new process; waiting until it is ready");

    let ready = async {
        ours.set_nonblocking(true)?;
        let mut ours = UnixStream::from_std(ours)?;
        let mut byte = [0u8; 1];
        Ok::<_, std::io::Error>(ours.read(&mut byte).await? == 1)
    };
    match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(Ok(true)) => {
            starting.ready = true;
            Ok(Successor { pid })
        }
        Ok(_) => Err(UpgradeError::Exited {
            pid,
            status: exit_status(&mut starting.child).await,
        }),
        Err(_) => {
            let _ = starting.child.start_kill();
            let _ = starting.child.wait().await;
            Err(UpgradeError::TimedOut { pid })
        }
    }
}

/// A new process that is not ready yet. Dropped so (the upgrade was given up:
/// SIGTERM came meanwhile), it is killed: it must not start serving after the
/// process that started it has stopped.
/// Once ready it serves, and must outlive this process.
struct Starting {
    child: Child,
    ready: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if !self.ready {
            let _ = self.child.start_kill();
        }
    }
}

/// The child's exit status: it closed its end of the channel, so it is
/// exiting; one that does not within 5 s is killed.
async fn exit_status(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => describe(status),
        Ok(Err(e)) => format!("an unknown status ({e})"),
        Err(_) => {
            let _ = child.start_kill();
            "its readiness channel closed while it kept running (killed it)".to_owned()
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// Tells the process that started this one by an upgrade that this one is
/// ready. Does nothing when this process was not started by an upgrade.
pub fn announce_ready() {
    let Ok(value) = std::env::var(READY_FD_VAR) else {
        return;
    };
    let Ok(fd) = value.trim().parse::<RawFd>() else {
        tracing::warn!("{READY_FD_VAR}: `{value}` is not a descriptor number; ignored");
        return;
    };
    if !handover::handed_over(fd) {
        tracing::warn!("{READY_FD_VAR}: descriptor {fd} is not open; ignored");
        return;
    }
    // SAFETY: the variable names the socket our predecessor opened for this
    // message; it is open (checked above) and owned by nothing else here.
    let mut channel = StdUnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = channel.write_all(b"R") {
        tracing::warn!("cannot tell the previous process that this one is ready: {e}");
    }
}

/// Whether this process was started by an upgrade.
pub fn is_successor() -> bool {
    std::env::var_os(READY_FD_VAR).is_some()
}
