//! Pod admission: the resource-fit check and the device manager's per-container,
//! per-resource device selection, GetPreferredAllocation and Allocate, in the
//! kubelet device manager's order (`devicesToAllocate`, `allocateContainerResources`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api;
use crate::error::{AdmissionError, StartError};
use crate::state::{Allocation, PluginClient, Shared};
use crate::types::{Admission, Container, ContainerAllocation, Pod, ResourceAllocation};
use crate::util::{grpc_error_string, shuffled};

/// What the locked selection phase decided for one (container, resource).
enum Plan {
    /// Not a device-plugin resource, or nothing to do.
    Skip,
    /// Devices already recorded for this container and still healthy: reuse the cached answer.
    Cached(ResourceAllocation),
    /// Select more devices.
    Select {
        /// Already chosen (init-container reuse pool).
        chosen: BTreeSet<String>,
        /// Healthy minus allocated.
        available: BTreeSet<String>,
        needed: usize,
        required: usize,
        /// Set when GetPreferredAllocation must be called.
        preferred_client: Option<PluginClient>,
    },
}

pub(crate) async fn admit(shared: &Arc<Shared>, pod: &Pod) -> Result<Admission, AdmissionError> {
    let _one_at_a_time = shared.admission.lock().await;
    if shared.opts.fit_check {
        fit_check(shared, pod)?;
    }
    let mut reuse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut admission = Admission::default();
    let containers = pod
        .init_containers
        .iter()
        .map(|c| (c, true))
        .chain(pod.containers.iter().map(|c| (c, false)));
    for (container, init) in containers {
        match admit_container(shared, pod, container, init, &mut reuse).await {
            Ok(ca) => admission.containers.push(ca),
            Err(e) => {
                tracing::warn!(pod = %pod.name, container = %container.name, error = %e, "pod rejected");
                {
                    let mut st = shared.lock();
                    st.allocations.retain(|a| a.pod != pod.name);
                    st.pods.remove(&pod.name);
                }
                shared.notify();
                return Err(AdmissionError::Unexpected(e));
            }
        }
    }
    shared.lock().pods.insert(pod.name.clone(), pod.clone());
    shared.notify();
    Ok(admission)
}

/// The kubelet's `GeneralPredicates` resource fit for resources present in node status
/// (absent ones are dropped from the pod's requests, so such pods are admitted).
fn fit_check(shared: &Shared, pod: &Pod) -> Result<(), AdmissionError> {
    let st = shared.lock();
    for (resource, cap) in st.node_status() {
        let requested = pod.effective_request(&resource);
        if requested == 0 {
            continue;
        }
        let used: u64 = st
            .pods
            .iter()
            .filter(|(name, _)| **name != pod.name)
            .map(|(_, p)| p.effective_request(&resource))
            .sum();
        let capacity = cap.allocatable as u64;
        if used + requested > capacity {
            return Err(AdmissionError::OutOfResource {
                resource,
                requested,
                used,
                capacity,
            });
        }
    }
    Ok(())
}

async fn admit_container(
    shared: &Arc<Shared>,
    pod: &Pod,
    container: &Container,
    init: bool,
    reuse: &mut BTreeMap<String, BTreeSet<String>>,
) -> Result<ContainerAllocation, String> {
    let mut out = ContainerAllocation {
        name: container.name.clone(),
        init,
        ..ContainerAllocation::default()
    };
    for (resource, &count) in &container.limits {
        let required = usize::try_from(count).unwrap_or(usize::MAX);
        let pool = reuse.get(resource).cloned().unwrap_or_default();
        let plan = plan(shared, pod, container, resource, required, &pool)?;
        let alloc = match plan {
            Plan::Skip => continue,
            Plan::Cached(a) => a,
            Plan::Select {
                chosen,
                available,
                needed,
                required,
                preferred_client,
            } => {
                let ids = select(
                    resource,
                    chosen,
                    available,
                    needed,
                    required,
                    preferred_client,
                )
                .await?;
                allocate(shared, pod, container, resource, ids).await?
            }
        };
        let ids: BTreeSet<String> = alloc.device_ids.iter().cloned().collect();
        let pool = reuse.entry(resource.clone()).or_default();
        if init {
            pool.extend(ids);
        } else {
            pool.retain(|id| !ids.contains(id));
        }
        out.resources.insert(resource.clone(), alloc);
    }
    let cdi = shared.opts.version.cdi_enabled();
    for alloc in out.resources.values() {
        out.merged.merge(&alloc.response, cdi);
    }
    Ok(out)
}

/// The device manager's selection steps (reuse, must-include, preferred, fill), under the state lock.
fn plan(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    resource: &str,
    required: usize,
    reuse: &BTreeSet<String>,
) -> Result<Plan, String> {
    let st = shared.lock();
    let res = st.resources.get(resource);
    let has_entry = res.is_some_and(|r| r.in_status);
    let existing = st
        .allocations
        .iter()
        .find(|a| a.pod == pod.name && a.container == container.name && a.resource == resource);
    if !has_entry && !st.allocations.iter().any(|a| a.resource == resource) {
        // Not a device-plugin resource: the device manager skips it.
        return Ok(Plan::Skip);
    }
    if let Some(a) = existing
        && a.ids.len() != required
    {
        return Err(format!(
            "pod {:?} container {:?} changed request for resource {:?} from {} to {}",
            pod.name,
            container.name,
            resource,
            a.ids.len(),
            required
        ));
    }
    let Some(res) = res.filter(|r| r.in_status) else {
        return Err(format!("cannot allocate unregistered device {resource}"));
    };
    let healthy: BTreeSet<String> = res
        .devices
        .values()
        .filter(|d| d.healthy)
        .map(|d| d.id.clone())
        .collect();
    if healthy.is_empty() {
        return Err(format!(
            "no healthy devices present; cannot allocate unhealthy devices {resource}"
        ));
    }
    if let Some(a) = existing {
        if !a.ids.is_subset(&healthy) {
            return Err(format!(
                "previously allocated devices are no longer healthy; cannot allocate unhealthy devices {resource}"
            ));
        }
        return Ok(Plan::Cached(ResourceAllocation {
            device_ids: a.ids.iter().cloned().collect(),
            response: a.response.clone(),
        }));
    }
    if required == 0 {
        return Ok(Plan::Skip);
    }
    let mut chosen = BTreeSet::new();
    let mut needed = required;
    for id in shuffled(reuse.iter().cloned()) {
        if needed == 0 {
            break;
        }
        chosen.insert(id);
        needed -= 1;
    }
    let in_use = st.allocated(resource);
    let available: BTreeSet<String> = healthy.difference(&in_use).cloned().collect();
    if needed > 0 && available.len() < needed {
        return Err(format!(
            "requested number of devices unavailable for {resource}. Requested: {needed}, Available: {}",
            available.len()
        ));
    }
    let preferred_client = match &res.endpoint {
        Some(ep)
            if shared.opts.preferred_allocation
                && ep.options.get_preferred_allocation_available =>
        {
            ep.client.clone()
        }
        _ => None,
    };
    Ok(Plan::Select {
        chosen,
        available,
        needed,
        required,
        preferred_client,
    })
}

/// Steps 10–11: preferred allocation, then the kubelet's own (random) choice.
async fn select(
    resource: &str,
    mut chosen: BTreeSet<String>,
    available: BTreeSet<String>,
    mut needed: usize,
    required: usize,
    preferred_client: Option<PluginClient>,
) -> Result<BTreeSet<String>, String> {
    if needed == 0 {
        return Ok(chosen);
    }
    if let Some(mut client) = preferred_client {
        let request = api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: shuffled(available.union(&chosen).cloned()),
                must_include_device_i_ds: shuffled(chosen.iter().cloned()),
                allocation_size: i32::try_from(required).unwrap_or(i32::MAX),
            }],
        };
        let resp = client
            .get_preferred_allocation(request)
            .await
            .map_err(|s| {
                format!(
                    "device plugin GetPreferredAllocation rpc failed with err: {}",
                    grpc_error_string(&s)
                )
            })?;
        tracing::debug!(resource, "got preferred allocation");
        let preferred = resp
            .into_inner()
            .container_responses
            .into_iter()
            .next()
            .map(|r| r.device_i_ds)
            .unwrap_or_default();
        for id in preferred {
            if needed == 0 {
                break;
            }
            if available.contains(&id) && chosen.insert(id) {
                needed -= 1;
            }
        }
    }
    for id in shuffled(available.iter().cloned()) {
        if needed == 0 {
            break;
        }
        if chosen.insert(id) {
            needed -= 1;
        }
    }
    if needed > 0 {
        return Err(format!(
            "unexpectedly allocated less resources than required. Requested: {required}, Got: {}",
            required - needed
        ));
    }
    Ok(chosen)
}

/// Records the devices, calls Allocate and caches the answer; rolls back on error.
async fn allocate(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    resource: &str,
    ids: BTreeSet<String>,
) -> Result<ResourceAllocation, String> {
    let client = {
        let mut st = shared.lock();
        let endpoint = st.resources.get(resource).and_then(|r| r.endpoint.as_ref());
        let client = match endpoint {
            None => return Err(format!("unknown Device Plugin {resource}")),
            Some(ep) => match &ep.client {
                None => return Err(format!("endpoint {} has been stopped", ep.path.display())),
                Some(c) => c.clone(),
            },
        };
        // Reserve the devices while the RPC runs.
        st.allocations.push(Allocation {
            pod: pod.name.clone(),
            container: container.name.clone(),
            resource: resource.to_string(),
            ids: ids.clone(),
            response: api::ContainerAllocateResponse::default(),
        });
        client
    };
    let result = call_allocate(client, &ids).await;
    let mut st = shared.lock();
    let pos = st.allocations.iter().rposition(|a| {
        a.pod == pod.name && a.container == container.name && a.resource == resource
    });
    match result {
        Ok(response) => {
            if let Some(a) = pos.and_then(|p| st.allocations.get_mut(p)) {
                a.response = response.clone();
            }
            Ok(ResourceAllocation {
                device_ids: ids.into_iter().collect(),
                response,
            })
        }
        Err(e) => {
            if let Some(p) = pos {
                st.allocations.remove(p);
            }
            Err(e)
        }
    }
}

async fn call_allocate(
    mut client: PluginClient,
    ids: &BTreeSet<String>,
) -> Result<api::ContainerAllocateResponse, String> {
    let request = api::AllocateRequest {
        container_requests: vec![api::ContainerAllocateRequest {
            devices_ids: shuffled(ids.iter().cloned()),
        }],
    };
    let resp = client
        .allocate(request)
        .await
        .map_err(|s| grpc_error_string(&s))?
        .into_inner();
    match resp.container_responses.into_iter().next() {
        Some(r) => Ok(r),
        None => Err(
            "no containers return in allocation response &AllocateResponse{ContainerResponses:[]*ContainerAllocateResponse{},}"
                .to_string(),
        ),
    }
}

/// PreStartContainer for every device-plugin resource of the container.
pub(crate) async fn start_container(
    shared: &Shared,
    pod_name: &str,
    container_name: &str,
) -> Result<(), StartError> {
    let calls = {
        let st = shared.lock();
        let pod = st
            .pods
            .get(pod_name)
            .ok_or_else(|| StartError(format!("pod {pod_name:?} is not admitted")))?;
        let container = pod
            .init_containers
            .iter()
            .chain(&pod.containers)
            .find(|c| c.name == container_name)
            .ok_or_else(|| {
                StartError(format!(
                    "pod {pod_name:?} has no container {container_name:?}"
                ))
            })?;
        let mut calls = Vec::new();
        for (resource, &count) in &container.limits {
            let res = st.resources.get(resource);
            let known = res.is_some_and(|r| r.in_status)
                || st.allocations.iter().any(|a| a.resource == *resource);
            if !known || count == 0 {
                continue;
            }
            // A restart placeholder has no options: skipped.
            let Some(ep) = res.and_then(|r| r.endpoint.as_ref()) else {
                continue;
            };
            if !ep.options.pre_start_required {
                continue;
            }
            let Some(alloc) = st.allocations.iter().find(|a| {
                a.pod == pod_name && a.container == container_name && a.resource == *resource
            }) else {
                return Err(StartError(format!(
                    "no devices found allocated in local cache for pod {pod_name}, container {container_name}, resource {resource}"
                )));
            };
            let ids = shuffled(alloc.ids.iter().cloned());
            match &ep.client {
                Some(c) => calls.push((c.clone(), ids)),
                None => {
                    return Err(StartError(format!(
                        "device plugin PreStartContainer rpc failed with err: endpoint {} has been stopped",
                        ep.path.display()
                    )));
                }
            }
        }
        calls
    };
    for (mut client, ids) in calls {
        let call = client.pre_start_container(api::PreStartContainerRequest { devices_ids: ids });
        let result = tokio::time::timeout(PRE_START_TIMEOUT, call)
            .await
            .map_err(|_| {
                "rpc error: code = DeadlineExceeded desc = context deadline exceeded".to_string()
            })
            .and_then(|r| r.map_err(|s| grpc_error_string(&s)));
        if let Err(e) = result {
            return Err(StartError(format!(
                "device plugin PreStartContainer rpc failed with err: {e}"
            )));
        }
    }
    Ok(())
}

const PRE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
