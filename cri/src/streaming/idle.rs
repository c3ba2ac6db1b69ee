//! A streaming connection's idle limit (containerd's `stream_idle_timeout`, the kubelet
//! streaming server's): a connection that moves no byte either way for that long fails with
//! TimedOut, which ends its session as a client gone would (stdin closed, a terminal hung
//! up, a port-forward's pod connections closed). The clock is the read side's: the session's
//! reader always waits on it, so the limit needs no task of its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct Idle<T> {
    inner: T,
    limit: Option<Duration>,
    /// When the connection last moved a byte.
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> Idle<T> {
    /// `limit` None: no limit (the adapter only passes through).
    pub fn new(inner: T, limit: Option<Duration>) -> Self {
        let now = Instant::now();
        Idle {
            inner,
            limit,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(
                now + limit.unwrap_or(Duration::ZERO),
            )),
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
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(limit) = self.limit else {
                    return Poll::Pending;
                };
                // Armed for the idle limit counted from the last byte (a write since the
                // timer was set moved it on).
                loop {
                    let due = self.last + limit;
                    if self.timer.deadline() != due {
                        self.timer.as_mut().reset(due);
                    }
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if self.last + limit <= Instant::now() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no byte either way for {} s", limit.as_secs()),
                        )));
                    }
                }
            }
        }
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
            self.last = Instant::now();
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_both_ways_times_out_and_traffic_either_way_defers_it() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut idle = Idle::new(a, Some(Duration::from_secs(10)));
        let mut buf = [0u8; 16];
        // Bytes in at 6 s, out at 12 s: each moves the limit on.
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            b.write_all(b"in").await.unwrap();
            let mut got = [0u8; 3];
            b.read_exact(&mut got).await.unwrap();
            b
        });
        let started = Instant::now();
        assert_eq!(idle.read(&mut buf).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_secs(6)).await;
        idle.write_all(b"out").await.unwrap();
        let _b = peer.await.unwrap();
        let e = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // The last byte (the write) at 12 s, the limit 10 s after it.
        assert_eq!(started.elapsed().as_secs(), 22);
        // Without a limit, never.
        let (a, _b) = tokio::io::duplex(1024);
        let mut none = Idle::new(a, None);
        let r = tokio::time::timeout(Duration::from_secs(86400), none.read(&mut buf)).await;
        assert!(r.is_err(), "read ended without a limit");
    }
}
