//! The core's answers in the kubelet's wire types. The core keeps its own
//! copies of the few messages it decides (so it does not depend on the
//! generated API); the conversion is field for field.

use gpu_slicer_api as api;
use gpu_slicer_core::allocate;

/// One container's Allocate answer on the wire.
pub fn container_response(
    r: allocate::ContainerAllocateResponse,
) -> api::ContainerAllocateResponse {
    api::ContainerAllocateResponse {
        envs: r.envs,
        mounts: r
            .mounts
            .into_iter()
            .map(|m| api::Mount {
                container_path: m.container_path,
                host_path: m.host_path,
                read_only: m.read_only,
            })
            .collect(),
        devices: r
            .devices
            .into_iter()
            .map(|d| api::DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        annotations: r.annotations,
        cdi_devices: r
            .cdi_devices
            .into_iter()
            .map(|c| api::CdiDevice { name: c.name })
            .collect(),
    }
}
