//! Connections that the simulated kubelet can drop at once, as a dying process does.
//!
//! tonic and hyper serve each connection in a task of its own, so stopping a server (or
//! dropping a `Channel`) does not close a connection that is still in use. Every Unix
//! connection of the simulator, accepted on `kubelet.sock` or dialled to a plugin, is
//! wrapped in a [`Killable`] tied to a [`KillSwitch`]: killing the switch, or dropping it,
//! closes the socket (the peer reads EOF) and fails every later read or write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Closes every connection guarded by it when killed or dropped.
pub(crate) struct KillSwitch(watch::Sender<bool>);

impl KillSwitch {
    pub(crate) fn new() -> Self {
        KillSwitch(watch::channel(false).0)
    }

    /// Closes every guarded connection (and any guarded later).
    pub(crate) fn kill(&self) {
        self.0.send_replace(true);
    }

    /// Wraps `io` so that it closes when this switch is killed or dropped.
    #[cfg(test)]
    pub(crate) fn guard<S>(&self, io: S) -> Killable<S> {
        self.handle().guard(io)
    }

    /// A cloneable handle that guards connections made later (e.g. by a connector).
    pub(crate) fn handle(&self) -> KillHandle {
        KillHandle(self.0.subscribe())
    }
}

/// Guards connections for a [`KillSwitch`].
#[derive(Clone)]
pub(crate) struct KillHandle(watch::Receiver<bool>);

impl KillHandle {
    /// Wraps `io` so that it closes when the switch is killed or dropped.
    pub(crate) fn guard<S>(&self, io: S) -> Killable<S> {
        let mut rx = self.0.clone();
        Killable {
            io: Some(io),
            killed: Box::pin(async move {
                // A dropped switch (Err) kills as well.
                let _ = rx.wait_for(|killed| *killed).await;
            }),
        }
    }
}

/// A connection that closes when its [`KillSwitch`] fires.
pub(crate) struct Killable<S> {
    /// `None` once killed: the socket is closed.
    io: Option<S>,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<S> Killable<S> {
    /// The live connection, or `ConnectionReset` once killed. Registers the task's waker
    /// with the switch, so a task blocked on this connection wakes up when it fires.
    fn live(&mut self, cx: &mut Context<'_>) -> io::Result<&mut S> {
        if self.io.is_some() && self.killed.as_mut().poll(cx).is_ready() {
            // Dropping the stream closes the socket now, whatever else holds the connection.
            self.io = None;
        }
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionReset))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().live(cx) {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live(cx) {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live(cx) {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live(cx) {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live(cx) {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            // Already closed.
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}

impl<S> tonic::transport::server::Connected for Killable<S> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn kill_closes_the_socket_and_wakes_a_blocked_reader() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let switch = KillSwitch::new();
        let mut guarded = switch.guard(ours);
        peer.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        guarded.read_exact(&mut byte).await.unwrap();

        // A read blocked on the connection ends when the switch fires.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            guarded.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        switch.kill();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The peer reads EOF: the socket is closed, not merely idle.
        let mut buf = Vec::new();
        assert_eq!(peer.read_to_end(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn dropping_the_switch_kills_and_a_guard_after_kill_is_dead() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let switch = KillSwitch::new();
        let mut guarded = switch.guard(ours);
        drop(switch);
        assert!(guarded.write_all(b"x").await.is_err());
        let mut buf = Vec::new();
        assert_eq!(peer.read_to_end(&mut buf).await.unwrap(), 0);

        let (ours, _peer) = UnixStream::pair().unwrap();
        let switch = KillSwitch::new();
        switch.kill();
        let mut late = switch.guard(ours);
        assert!(late.write_all(b"x").await.is_err());
    }
}
