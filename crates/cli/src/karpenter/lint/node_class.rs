//! EC2NodeClass rules: custom AMIs and Bottlerocket's own NVIDIA plugin.

use super::*;

pub(super) fn lint_node_class(doc: &Document, sink: &mut Sink<'_>) {
    let spec = &doc.value["spec"];
    let user_data = spec["userData"].as_str().unwrap_or_default();
    if spec["amiFamily"] == "Custom" {
        if user_data.trim().is_empty() {
            sink.add(
                doc,
                "spec.amiFamily",
                Severity::Error,
                "custom-ami-without-user-data",
                "amiFamily Custom without userData: Karpenter generates no bootstrap, so nodes never join (or register without the \
                 karpenter.sh/unregistered:NoExecute taint: UnregisteredTaintMissing) and NodeClaims are deleted after 15 minutes. Use \
                 amiSelectorTerms: [{alias: al2023@<version>}] (Karpenter picks the NVIDIA variant) or bottlerocket@<version>",
            );
        }
        if let Some(devices) = spec["blockDeviceMappings"].as_array() {
            for (i, d) in devices.iter().enumerate() {
                if d["deviceName"] == "/dev/xvda" {
                    sink.add(
                        doc,
                        format!("spec.blockDeviceMappings[{i}].deviceName"),
                        Severity::Warning,
                        "custom-ami-root-device",
                        "/dev/xvda is the root device of AL2023 and Bottlerocket, not of every custom AMI (Ubuntu images use /dev/sda1): \
                         a mapping for another name adds a volume instead of growing the root disk. Check the AMI's root device name",
                    );
                }
            }
        }
    }
    let bottlerocket = spec["amiFamily"] == "Bottlerocket"
        || spec["amiSelectorTerms"].as_array().is_some_and(|t| {
            t.iter().any(|t| {
                t["alias"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("bottlerocket"))
            })
        });
    if bottlerocket {
        let disabled = user_data
            .split("[settings.kubelet-device-plugins.nvidia]")
            .nth(1)
            .and_then(|t| t.split("\n[").next())
            .is_some_and(|t| {
                t.lines()
                    .any(|l| l.replace([' ', '\t'], "") == "enabled=false")
            });
        if !disabled {
            sink.add(
                doc,
                "spec.userData",
                Severity::Error,
                "bottlerocket-plugin-enabled",
                "Bottlerocket's NVIDIA variants run their own device plugin: next to gpu-slicer the same GPU can be handed out twice. \
                 Disable it in userData (Bottlerocket >= 1.63.0): [settings.kubelet-device-plugins.nvidia] enabled = false",
            );
        }
    }
}
