//! What a worker tells its supervisor, over a Unix socket pair made for it: one line per
//! message. The supervisor tells its workers what to do with signals (TERM: finish and
//! stop; QUIT: stop now; USR1: reopen logs), as gunicorn's arbiter does, so an operator can
//! send the same signals by hand.

use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// A worker's message to its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// Listening, the application loaded: it may take the place of another.
    Ready,
    /// Replace me (a new worker first, then stop me): why.
    Recycle(RecycleReason),
}

/// Why a worker asks to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    /// It served `--max-requests`.
    MaxRequests,
    /// Every Python thread it may have is stuck in a request longer than `--timeout`.
    Timeout,
}

impl RecycleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RecycleReason::MaxRequests => "max-requests",
            RecycleReason::Timeout => "timeout",
        }
    }
}

impl WorkerMessage {
    fn encode(&self) -> String {
        match self {
            WorkerMessage::Ready => "ready\n".into(),
            WorkerMessage::Recycle(reason) => format!("recycle {}\n", reason.as_str()),
        }
    }

    /// A line from a worker, without its newline; `None` for one not understood.
    pub fn decode(line: &str) -> Option<WorkerMessage> {
        match line.trim_end() {
            "ready" => Some(WorkerMessage::Ready),
            "recycle max-requests" => Some(WorkerMessage::Recycle(RecycleReason::MaxRequests)),
            "recycle timeout" => Some(WorkerMessage::Recycle(RecycleReason::Timeout)),
            _ => None,
        }
    }
}

/// The worker's end of the socket pair.
pub struct SupervisorLink {
    stream: Mutex<UnixStream>,
}

impl SupervisorLink {
    /// The end the supervisor left open in this process as descriptor `fd`.
    pub fn from_fd(fd: i32) -> io::Result<SupervisorLink> {
        super::listen::close_on_exec(fd)?;
        // SAFETY: the supervisor passed this descriptor to this process for this purpose
        // alone (`--internal-worker`), and nothing else here takes ownership of it.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        Ok(SupervisorLink {
            stream: Mutex::new(stream),
        })
    }

    pub fn send(&self, message: &WorkerMessage) -> io::Result<()> {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.write_all(message.encode().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for message in [
            WorkerMessage::Ready,
            WorkerMessage::Recycle(RecycleReason::MaxRequests),
            WorkerMessage::Recycle(RecycleReason::Timeout),
        ] {
            assert_eq!(WorkerMessage::decode(&message.encode()), Some(message));
        }
        assert_eq!(WorkerMessage::decode("reboot"), None);
    }
}
