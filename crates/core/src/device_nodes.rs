//! Device-node paths, in one place: which nodes a GPU or MIG device needs
//! (`/dev/nvidia<minor>`, the MIG capability nodes), the node-wide control
//! nodes, and how a container path maps to the host under the dev root.
//! Allocate's `DeviceSpec`s and the CDI spec both use these rules.

use std::collections::HashMap;

/// The container path of a GPU's device node.
pub fn gpu_node(minor: u32) -> String {
    format!("/dev/nvidia{minor}")
}

/// The container path of a MIG capability node.
pub fn capability_node(minor: u32) -> String {
    format!("{CAPABILITY_DIR}nvidia-cap{minor}")
}

/// Where the MIG capability nodes are (container path).
const CAPABILITY_DIR: &str = "/dev/nvidia-caps/";

/// Whether a container path is a MIG capability node.
pub fn is_capability_node(container_path: &str) -> bool {
    container_path.starts_with(CAPABILITY_DIR)
}

/// The host path of a device node under the dev root (`/` or a driver
/// container's root such as `/run/nvidia/driver`).
pub fn host_path(dev_root: &str, container_path: &str) -> String {
    format!("{}{container_path}", dev_root.trim_end_matches('/'))
}

/// Device nodes of this node that are not tied to one GPU: control nodes
/// found under the dev root, the MIG capability minors, and the nodes of
/// the optional device classes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDeviceFiles {
    /// Present control nodes, e.g. `/dev/nvidiactl`, `/dev/nvidia-uvm`.
    pub control: Vec<String>,
    /// `(gpu minor, GI id, CI id)` → (GI capability minor, CI capability minor).
    pub mig_caps: HashMap<(u32, u32, u32), (u32, u32)>,
    /// Present nodes of each optional class (empty: the class is absent).
    pub classes: ClassNodes,
    /// The driver's user-space files, for the CDI spec.
    pub driver: crate::driver_files::DriverFiles,
}

/// The optional device classes Allocate can hand out beside the GPUs
/// (`gdrcopyEnabled`, `gdsEnabled`, `mofedEnabled`), by CDI class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceClass {
    Gdrcopy,
    Gds,
    Mofed,
}

impl DeviceClass {
    pub const ALL: [DeviceClass; 3] = [DeviceClass::Gdrcopy, DeviceClass::Gds, DeviceClass::Mofed];

    /// The CDI class (`k8s.device-plugin.nvidia.com/<class>=all`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Gdrcopy => "gdrcopy",
            DeviceClass::Gds => "gds",
            DeviceClass::Mofed => "mofed",
        }
    }

    /// The environment variable NVIDIA's plugin sets for it.
    pub fn env(self) -> &'static str {
        match self {
            DeviceClass::Gdrcopy => "NVIDIA_GDRCOPY",
            DeviceClass::Gds => "NVIDIA_GDS",
            DeviceClass::Mofed => "NVIDIA_MOFED",
        }
    }

    /// Which device nodes make the class, under the dev root: GDRCopy's
    /// `/dev/gdrdrv`, GPUDirect Storage's `/dev/nvidia-fs*`, and the RDMA
    /// nodes of MLNX_OFED in `/dev/infiniband/`.
    pub fn matches(self, dev_relative: &str) -> bool {
        match self {
            DeviceClass::Gdrcopy => dev_relative == "gdrdrv",
            DeviceClass::Gds => dev_relative.starts_with("nvidia-fs"),
            DeviceClass::Mofed => dev_relative.starts_with("infiniband/"),
        }
    }
}

/// The present device nodes of each optional class (container paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassNodes {
    pub gdrcopy: Vec<String>,
    pub gds: Vec<String>,
    pub mofed: Vec<String>,
}

impl ClassNodes {
    pub fn of(&self, class: DeviceClass) -> &[String] {
        match class {
            DeviceClass::Gdrcopy => &self.gdrcopy,
            DeviceClass::Gds => &self.gds,
            DeviceClass::Mofed => &self.mofed,
        }
    }

    pub fn of_mut(&mut self, class: DeviceClass) -> &mut Vec<String> {
        match class {
            DeviceClass::Gdrcopy => &mut self.gdrcopy,
            DeviceClass::Gds => &mut self.gds,
            DeviceClass::Mofed => &mut self.mofed,
        }
    }
}

impl NodeDeviceFiles {
    /// The nodes a device needs: its GPU's node and, for a MIG device
    /// (`mig` = GPU instance, compute instance), the two capability nodes
    /// when the node's `mig-minors` knows them.
    pub fn nodes_of(&self, gpu_minor: u32, mig: Option<(u32, u32)>) -> Vec<String> {
        let mut nodes = vec![gpu_node(gpu_minor)];
        if let Some((gi, ci)) = mig
            && let Some(&(gi_minor, ci_minor)) = self.mig_caps.get(&(gpu_minor, gi, ci))
        {
            nodes.push(capability_node(gi_minor));
            nodes.push(capability_node(ci_minor));
        }
        nodes
    }

    /// Parses `/proc/driver/nvidia-caps/mig-minors` (`gpu0/gi1/ci0/access 14`).
    pub fn parse_mig_minors(text: &str) -> HashMap<(u32, u32, u32), (u32, u32)> {
        let mut gi_minor: HashMap<(u32, u32), u32> = HashMap::new();
        let mut ci_minor: Vec<((u32, u32, u32), u32)> = Vec::new();
        for line in text.lines() {
            let Some((cap, minor)) = line.trim().split_once(' ') else {
                continue;
            };
            let Ok(minor) = minor.trim().parse::<u32>() else {
                continue;
            };
            let parts: Vec<&str> = cap.split('/').collect();
            let number = |s: &str, prefix: &str| s.strip_prefix(prefix)?.parse::<u32>().ok();
            match parts.as_slice() {
                [gpu, gi, "access"] => {
                    if let (Some(g), Some(i)) = (number(gpu, "gpu"), number(gi, "gi")) {
                        gi_minor.insert((g, i), minor);
                    }
                }
                [gpu, gi, ci, "access"] => {
                    if let (Some(g), Some(i), Some(c)) =
                        (number(gpu, "gpu"), number(gi, "gi"), number(ci, "ci"))
                    {
                        ci_minor.push(((g, i, c), minor));
                    }
                }
                _ => {}
            }
        }
        ci_minor
            .into_iter()
            .filter_map(|((g, i, c), ci)| gi_minor.get(&(g, i)).map(|&gi| ((g, i, c), (gi, ci))))
            .collect()
    }

    /// The driver's pre-assigned minors (GI = 3 + 135·G + 9·I, CI = GI + 1 + C),
    /// for simulated nodes where no `mig-minors` file exists.
    pub fn synthetic_mig_minors(gpus: u32) -> HashMap<(u32, u32, u32), (u32, u32)> {
        let mut map = HashMap::new();
        for g in 0..gpus {
            for i in 0..15 {
                let gi = 3 + 135 * g + 9 * i;
                for c in 0..8 {
                    map.insert((g, i, c), (gi, gi + 1 + c));
                }
            }
        }
        map
    }
}
