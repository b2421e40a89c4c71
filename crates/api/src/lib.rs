//! The kubelet DevicePlugin API v1beta1 (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`),
//! generated from `proto/` with both the server (the plugin's side) and the
//! client (the kubelet's side, used by the stand-in kubelet and the
//! benchmarks) compiled once for the whole workspace.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("v1beta1");

/// The kubelet's PodResources API v1 (`k8s.io/kubelet/pkg/apis/podresources/v1`):
/// which devices pods hold, read before a MIG layout change (client), served
/// by the stand-in kubelet (server).
pub mod pod_resources {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("v1");
}
