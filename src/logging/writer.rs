//! Where log lines go: a bounded queue in front of one writer thread.
//!
//! The access log writes a line for every connection. Written from the runtime
//! threads, each line would be a `write(2)` on stderr under the standard
//! library's stderr lock, which every connection on every core would share. So
//! the runtime threads only queue the formatted line; one thread writes them,
//! through a buffer that it flushes whenever the queue runs empty: one system
//! call for many lines under load, and no delay when idle. If the queue is full
//! (stderr slower than the connection rate for a while), lines are dropped and
//! counted (`sniroute_log_lines_dropped_total`) instead of stalling the proxy.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread.
const QUEUE_LINES: usize = 16 * 1024;

/// How long [`flush`] waits for the writer thread at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped because the queue was full, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

enum Message {
    Line(Vec<u8>),
    /// Everything queued before it is written; answer on the sender.
    Flushed(mpsc::Sender<()>),
}

/// The sending end, handed to the subscriber as its writer.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Message>,
}

/// The queue of the process, set by [`start`].
static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Starts the writer thread (once) and returns the queue in front of it.
pub fn start() -> io::Result<Queue> {
    if let Some(queue) = QUEUE.get() {
        return Ok(queue.clone());
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("sniroute-log".into())
        .spawn(move || write_lines(rx, io::stderr()))?;
    Ok(QUEUE.get_or_init(|| Queue { tx }).clone())
}

/// Waits (briefly) until every line queued so far is written: call before exit.
pub fn flush() {
    if let Some(queue) = QUEUE.get() {
        let (done, wait) = mpsc::channel();
        if queue.tx.send(Message::Flushed(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }
}

fn write_lines(rx: Receiver<Message>, out: impl Write) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        // Everything already queued goes into the buffer before one flush.
        for message in std::iter::once(first).chain(rx.try_iter()) {
            // A failing stderr (closed) loses lines; there is nowhere else to say so.
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flushed(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
        }
        let _ = out.flush();
    }
}

/// One event's writer: collects the formatted event, queues it when dropped.
/// It borrows the queue's sender: cloning it per line would bump a counter
/// that every thread shares.
pub struct Line<'a> {
    tx: &'a SyncSender<Message>,
    bytes: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.bytes);
        // Full, or the writer thread is gone.
        if self.tx.try_send(Message::Line(line)).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            tx: &self.tx,
            bytes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_a_full_queue_drops_and_counts() {
        let (tx, rx) = mpsc::sync_channel(2);
        let queue = Queue { tx };
        let before = dropped();
        for i in 0..3 {
            writeln!(queue.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(dropped() - before, 1, "the third line finds the queue full");
        let out = Shared::default();
        let writer = std::thread::spawn({
            let out = out.clone();
            move || write_lines(rx, out)
        });
        let (done, wait) = mpsc::channel();
        queue.tx.send(Message::Flushed(done)).unwrap();
        wait.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            "line 0\nline 1\n"
        );
        drop(queue);
        writer.join().unwrap();
    }
}
