//! Everything that talks to the kubelet: registering on `kubelet.sock` and
//! telling one `kubelet.sock` from the next (here), the DevicePlugin gRPC
//! servers ([`plugin`]), their closable connections, the wire types, and
//! the PodResources client.

pub mod connection;
pub mod plugin;
pub mod pod_resources;
pub mod wire;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

use crate::kubelet::plugin::options;
use gpu_slicer_api::RegisterRequest;
use gpu_slicer_api::registration_client::RegistrationClient;
use gpu_slicer_core::config::ResourceName;
use gpu_slicer_core::lifecycle::KubeletId;

/// A kubelet ≥ 1.25 dials back and asks for options inside Register (up to
/// 10 s); this bounds the whole call.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to the kubelet at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "not registering '{resource}': {socket} was replaced by a new kubelet while connecting; registering with the new kubelet instead"
    )]
    Replaced { resource: String, socket: PathBuf },
    #[error("the kubelet refused to register '{resource}': {}", .status.message())]
    Refused {
        resource: String,
        status: tonic::Status,
    },
}

/// Registers one resource whose server listens on `endpoint` (a file name in
/// the kubelet's device-plugin directory; the kubelet joins it itself), with
/// the kubelet whose `kubelet.sock` has identity `meant` only.
///
/// The socket is dialled by path, so a kubelet that restarted after the
/// caller looked would get the call: the identity is checked again once
/// connected, and a replaced socket sends nothing (the caller registers with
/// the new kubelet once it sees it; see the life cycle's "A deleted socket").
pub async fn register(
    kubelet_socket: &Path,
    meant: KubeletId,
    endpoint: &str,
    resource: &ResourceName,
) -> Result<(), RegisterError> {
    let socket = kubelet_socket.to_path_buf();
    let connect_to = socket.clone();
    // The URI is ignored: the connector always dials the Unix socket.
    let channel = Endpoint::from_static("http://localhost")
        .timeout(REGISTER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connect_to.clone();
            async move {
                let stream = UnixStream::connect(&path).await?;
                if kubelet_identity(&path) != Some(meant) {
                    return Err(std::io::Error::other(REPLACED));
                }
                Ok(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| {
            if is_replaced(&source) {
                RegisterError::Replaced {
                    resource: resource.to_string(),
                    socket: socket.clone(),
                }
            } else {
                RegisterError::Connect { socket, source }
            }
        })?;
    let mut client = RegistrationClient::new(channel);
    client
        .register(RegisterRequest {
            version: "v1beta1".into(),
            endpoint: endpoint.into(),
            resource_name: resource.to_string(),
            options: Some(options()),
        })
        .await
        .map_err(|status| RegisterError::Refused {
            resource: resource.to_string(),
            status,
        })?;
    Ok(())
}

/// The connector's error when `kubelet.sock` changed under it.
const REPLACED: &str = "kubelet.sock was replaced while connecting";

fn is_replaced(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.to_string() == REPLACED {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Identity of `kubelet.sock`: device, inode and change time. A restarted
/// kubelet binds a new file; its inode number may be the one just freed,
/// its change time (in nanoseconds) is not.
pub fn kubelet_identity(path: &Path) -> Option<KubeletId> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}
