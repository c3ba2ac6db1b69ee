//! A streaming connection's idle limit (containerd's `stream_idle_timeout`, the kubelet
//! streaming server's): a connection that moves no byte either way for that long is shut
//! down (both directions of its socket), which ends its session as a client gone would
//! (stdin closed, a terminal hung up, a port-forward's pod connections closed), whatever its
//! tasks were waiting for: a read, a write to a client that stopped reading, a process's
//! output. A watchdog task per connection sleeps until the limit counted from the last byte.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When the connection last moved a byte; `done` once the connection is gone (its socket
/// closed or about to be: the watchdog must not touch the descriptor any more).
struct Clock {
    last: Instant,
    done: bool,
}

pub struct Idle<T> {
    inner: T,
    clock: Option<Arc<Mutex<Clock>>>,
}

fn lock(c: &Mutex<Clock>) -> MutexGuard<'_, Clock> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Idle<T> {
    /// `inner` runs over the socket `fd` (valid as long as `inner` is); `limit` None: no
    /// limit (the adapter only passes through). Spawns the watchdog (a Tokio runtime is
    /// needed then).
    pub fn new(inner: T, fd: RawFd, limit: Option<Duration>, what: String) -> Self {
        let Some(limit) = limit else {
            return Idle { inner, clock: None };
        };
        let clock = Arc::new(Mutex::new(Clock {
            last: Instant::now(),
            done: false,
        }));
        let c = clock.clone();
        tokio::spawn(async move {
            loop {
                let due = {
                    let c = lock(&c);
                    if c.done {
                        return;
                    }
                    c.last + limit
                };
                tokio::time::sleep_until(due).await;
                // Under the lock: the connection cannot close its socket (Idle's drop marks
                // it done first) while the descriptor is used here.
                let c = lock(&c);
                if c.done {
                    return;
                }
                if c.last + limit <= Instant::now() {
                    tracing::info!(
                        "streaming: {what}: no byte either way for {:?}: closed",
                        limit
                    );
                    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                    return;
                }
            }
        });
        Idle {
            inner,
            clock: Some(clock),
        }
    }

    fn moved(&self) {
        if let Some(c) = &self.clock {
            lock(c).last = Instant::now();
        }
    }
}

impl<T> Drop for Idle<T> {
    fn drop(&mut self) {
        if let Some(c) = &self.clock {
            lock(c).done = true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes in at 6 s, out at 12 s (written while a read waits on the other half): each
    /// moves the limit on; then silence, and the socket is shut down 10 s after the last
    /// byte: the waiting read ends. Paused time: the clock is the runtime's, not the wall's.
    #[tokio::test(start_paused = true)]
    async fn idle_both_ways_is_shut_down_and_traffic_either_way_defers_it() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let idle = Idle::new(a, fd, Some(Duration::from_secs(10)), "test".into());
        let (mut rd, mut wr) = tokio::io::split(idle);
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut got = Vec::new();
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return (got, started.elapsed()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        b.write_all(b"in").await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        wr.write_all(b"out").await.unwrap();
        let mut out = [0u8; 3];
        b.read_exact(&mut out).await.unwrap();
        let (got, at) = reader.await.unwrap();
        assert_eq!(got, b"in");
        // The last byte (the write) at 12 s, the limit 10 s after it.
        assert_eq!(at.as_secs(), 22);
        // The peer sees the connection end too.
        assert_eq!(b.read(&mut out).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_nothing_is_shut_down() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let mut none = Idle::new(a, fd, None, "test".into());
        let mut buf = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(86400), none.read(&mut buf)).await;
        assert!(r.is_err(), "read ended without a limit");
    }
}
