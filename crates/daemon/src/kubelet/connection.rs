//! Connections a server can close.
//!
//! A stopped tonic server sends GOAWAY and waits for open requests, and a
//! ListAndWatch stream never finishes by itself: the kubelet kept the stream
//! of a replaced server open beside the new one (three streams for one
//! resource after two socket deletions). A plugin must not end the stream
//! itself either (the kubelet reads a finished stream as a dead plugin, and
//! the reference says to close the connection instead). So each accepted
//! connection is wrapped: once the server's token is cancelled, reads see
//! end-of-file and writes fail, hyper drops the connection, the socket
//! closes, and the kubelet sees its stream end.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A Unix connection that ends when its server stops.
pub struct Closable {
    io: UnixStream,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    closed: bool,
}

impl Closable {
    pub fn new(io: UnixStream, stop: &CancellationToken) -> Self {
        Closable {
            io,
            stopped: Box::pin(stop.clone().cancelled_owned()),
            closed: false,
        }
    }

    /// Whether the server stopped; registers `cx` to be woken when it does,
    /// so an idle connection (a stream waiting for changes) ends promptly.
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.stopped.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        self.closed
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the plugin server stopped")
}

impl AsyncRead for Closable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Ok(())); // end of file
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Closable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(stopped()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(stopped()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Closable {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
