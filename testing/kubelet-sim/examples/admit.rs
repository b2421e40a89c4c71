//! Admits pods through the stand-in kubelet and prints what each
//! container receives, for runs on real hardware (docs/real-gpu.md): start
//! it, start the device plugin against the same directory, and it waits
//! until `RESOURCE` has enough healthy devices, admits `PODS` pods asking for
//! `COUNT` each, prints one JSON line per container (`envs`, `mounts`,
//! `devices`, `cdi`: the CDI names it receives, `annotations`), and exits.
//! `COUNT` may be a list (`2,1,1`): pod *i* then asks for its *i*-th entry,
//! round robin. `RESOURCE` may join several with `+`
//! (`nvidia.com/mig-1g.5gb+nvidia.com/mig-2g.10gb`): each container then
//! asks for `COUNT` of each (.ci/check-cdi-podman uses it).
//!
//! `cargo run -p kubelet-sim --example admit -- DIR RESOURCE COUNT PODS`

use std::time::Duration;

use kubelet_sim::{Container, Kubelet, Options, Pod};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, resource, count, pods] = args.as_slice() else {
        return Err("usage: admit DIR RESOURCE COUNT PODS".into());
    };
    let counts: Vec<usize> = count.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let pods: usize = pods.parse()?;
    let count_of = |i: usize| counts[i % counts.len()];
    let resources: Vec<String> = resource.split('+').map(str::to_string).collect();
    let kubelet = Kubelet::start(Options::new(dir)).await?;
    let wanted: usize = (0..pods).map(count_of).sum();
    let names = resources.clone();
    kubelet
        .wait_until(
            move |s| {
                names
                    .iter()
                    .all(|name| s.get(name).is_some_and(|c| c.allocatable >= wanted))
            },
            Duration::from_secs(60),
        )
        .await?;
    for i in 0..pods {
        let container = resources.iter().fold(Container::new("main"), |c, r| {
            c.limit(r, count_of(i) as u64)
        });
        let pod = Pod::new(format!("pod-{i}")).container(container);
        let admission = kubelet.admit(&pod).await?;
        for container in &admission.containers {
            let merged = &container.merged;
            let mounts: Vec<String> = merged
                .mounts
                .iter()
                .map(|m| {
                    format!(
                        "{{\"container\":{:?},\"host\":{:?}}}",
                        m.container_path, m.host_path
                    )
                })
                .collect();
            let envs: Vec<String> = merged
                .envs
                .iter()
                .map(|(k, v)| format!("{k:?}:{v:?}"))
                .collect();
            let devices: Vec<String> = container
                .resources
                .values()
                .flat_map(|r| r.device_ids.iter().map(|d| format!("{d:?}")))
                .collect();
            let cdi: Vec<String> = merged
                .cdi_devices
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            let annotations: Vec<String> = merged
                .annotations
                .iter()
                .map(|(k, v)| format!("{k:?}:{v:?}"))
                .collect();
            println!(
                "{{\"pod\":\"pod-{i}\",\"devices\":[{}],\"envs\":{{{}}},\"mounts\":[{}],\"cdi\":[{}],\"annotations\":{{{}}}}}",
                devices.join(","),
                envs.join(","),
                mounts.join(","),
                cdi.join(","),
                annotations.join(",")
            );
        }
    }
    kubelet.shutdown().await;
    Ok(())
}
