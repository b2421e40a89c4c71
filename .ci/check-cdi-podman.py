#!/usr/bin/env python3
"""The CDI spec in a real container runtime (podman with runc).

For each scenario, the release daemon runs on a simulated node against the
stand-in kubelet (the `admit` example of testing/kubelet-sim) and writes its
CDI spec to /var/run/cdi (podman 4.3 reads no other directory; the wrapper
runs this in a private mount namespace where that is a directory of its
own), with device nodes under a fake dev root made of real character
devices. The kubelet
admits pods; each container's real Allocate answer (its CDI names, from
`cdiDevices` or the CDI annotation, and its environment) starts a podman
container, which must see exactly the device nodes the spec gives its names,
with the host's major:minor and file mode, be allowed exactly those nodes by
its device cgroup, and end with the NVIDIA_VISIBLE_DEVICES that its
strategies call for. An unknown name must fail container creation.

Usage: check-cdi-podman.py DAEMON ADMIT ROOTFS WORKDIR
(.ci/check-cdi-podman prepares the tools, the binaries and the rootfs.)
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

DAEMON, ADMIT, ROOTFS, WORK = sys.argv[1:5]
CDI_DIR = "/var/run/cdi"
SPEC = os.path.join(CDI_DIR, "k8s.device-plugin.nvidia.com-gpu.json")
GPU_MAJOR, CAPS_MAJOR = 195, 236
GPU_MODE, CAPS_MODE = 0o666, 0o444
PODMAN = [
    "podman", "run", "--rm", "--runtime", "runc", "--network", "none",
    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
    "--read-only", "--cap-drop", "ALL",
]

MIG_MIXED = "version: v1\nflags:\n  migStrategy: mixed\n"
TIME_SLICING = (
    "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n"
    "    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n"
)
MIG = ["nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb"]

# (what, instance, MIG layout, config, strategies, id strategy, [(resources, count)])
SCENARIOS = [
    ("p4d.24xlarge all-balanced, MIG mixed, cdi-cri, uuid ids",
     "p4d.24xlarge", "all-balanced", MIG_MIXED, "cdi-cri", "uuid",
     [(MIG[:1], 1), (MIG[:1], 2), (MIG, 1)]),
    ("p4d.24xlarge all-balanced, MIG mixed, cdi-annotations, index ids",
     "p4d.24xlarge", "all-balanced", MIG_MIXED, "cdi-annotations", "index",
     [(MIG[1:2], 1), (MIG, 1)]),
    ("g5.12xlarge, time-slicing x4, cdi-cri, uuid ids",
     "g5.12xlarge", None, TIME_SLICING, "cdi-cri", "uuid",
     [(["nvidia.com/gpu"], 1), (["nvidia.com/gpu"], 4)]),
    # One GPU: two and three replicas are one device, named once.
    ("g5.xlarge, time-slicing x4, envvar + cdi-cri, index ids",
     "g5.xlarge", None, TIME_SLICING, "envvar,cdi-cri", "index",
     [(["nvidia.com/gpu"], 2), (["nvidia.com/gpu"], 3)]),
]

failures = []
containers = 0


def fail(message):
    failures.append(message)
    print("FAIL: " + message, file=sys.stderr)


def make_dev_root(root, gpus):
    """A fake dev root: the GPU nodes and every MIG capability node a
    simulated node's spec can name, as real character devices with the
    driver's modes (GPUs 0666, capability nodes 0444)."""
    dev = os.path.join(root, "dev")
    os.makedirs(os.path.join(dev, "nvidia-caps"), exist_ok=True)
    nodes = {}
    for minor in range(gpus):
        nodes[f"/dev/nvidia{minor}"] = (GPU_MAJOR, minor, GPU_MODE)
    nodes["/dev/nvidiactl"] = (GPU_MAJOR, 255, GPU_MODE)
    # mig-minors numbering: 135 per GPU after the first 3 (the spec's
    # synthetic minors follow the driver's).
    for minor in range(1, 3 + 135 * gpus):
        nodes[f"/dev/nvidia-caps/nvidia-cap{minor}"] = (CAPS_MAJOR, minor, CAPS_MODE)
    for path, (major, minor, mode) in nodes.items():
        host = root + path
        if not os.path.exists(host):
            os.mknod(host, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(host, mode)  # mknod applies the umask
    return nodes


def run_daemon(scenario_dir, dev_root, instance, layout, config, strategies, ids):
    plugins = os.path.join(scenario_dir, "dp")
    os.makedirs(plugins, exist_ok=True)
    config_file = os.path.join(scenario_dir, "config.yaml")
    with open(config_file, "w") as f:
        f.write(config)
    args = [
        DAEMON, "run", "--device-plugin-path", plugins, "--config-file", config_file,
        "--simulate", instance, "--device-list-strategy", strategies,
        "--device-id-strategy", ids, "--dev-root", dev_root, "--cdi-spec-dir", CDI_DIR,
    ]
    if layout:
        args += ["--mig-config", layout]
    log = open(os.path.join(scenario_dir, "daemon.log"), "w")
    return plugins, subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), log


def admit(plugins, requests):
    """Admits one pod per request through the stand-in kubelet and returns
    each container's answer."""
    answers = []
    for resources, count in requests:
        out = subprocess.run(
            [ADMIT, plugins, "+".join(resources), str(count), "1"],
            capture_output=True, text=True, timeout=300,
        )
        if out.returncode != 0:
            raise SystemExit(f"admit {resources} x{count} failed: {out.stderr}")
        for line in out.stdout.splitlines():
            answer = json.loads(line)
            answer["asked"] = f"{'+'.join(resources)} x{count}"
            answers.append(answer)
    return answers


def names_of(answer, strategies):
    names = list(answer["cdi"])
    for key, value in answer["annotations"].items():
        if key.startswith("cdi.k8s.io/"):
            names += [n for n in value.split(",") if n not in names]
    if "cdi-cri" not in strategies and answer["cdi"]:
        fail(f"{answer['asked']}: cdiDevices without cdi-cri: {answer['cdi']}")
    return names


def expected_nodes(spec, names):
    """Container path -> (host path, fileMode) that the names' devices and
    the spec-wide edits give."""
    by_name = {d["name"]: d for d in spec["devices"]}
    nodes = {}
    edits = [spec.get("containerEdits", {})]
    for name in names:
        kind, device = name.split("=", 1)
        if kind != spec["kind"] or device not in by_name:
            fail(f"{name} is not defined in {SPEC}")
            continue
        edits.append(by_name[device]["containerEdits"])
    for e in edits:
        for n in e.get("deviceNodes", []):
            nodes[n["path"]] = (n.get("hostPath", n["path"]), n.get("fileMode"))
    return nodes


SCRIPT = (
    "for n in /dev/nvidia* /dev/nvidia-caps/*; do [ -c \"$n\" ] && stat -c '%n %t %T %a' \"$n\"; done;"
    " echo '--cgroup'; cat /sys/fs/cgroup/devices/devices.list; echo '--env'; env"
)


def check_container(what, answer, names, spec, fake, strategies):
    global containers
    nodes = expected_nodes(spec, names)
    env = {"NVIDIA_VISIBLE_DEVICES": "all"}  # a CUDA image's own value
    env.update(answer["envs"])  # the answer's envs override the image's
    args = list(PODMAN)
    for k, v in sorted(env.items()):
        args += ["--env", f"{k}={v}"]
    for name in names:
        args += ["--device", name]
    args += ["--rootfs", ROOTFS, "sh", "-c", SCRIPT]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    containers += 1
    label = f"{what}: {answer['asked']} -> {names}"
    failed_before = len(failures)
    if out.returncode != 0:
        fail(f"{label}: podman failed ({out.returncode}): {out.stderr.strip()}")
        return
    section, seen, allowed, visible = "nodes", {}, [], []
    for line in out.stdout.splitlines():
        if line in ("--cgroup", "--env"):
            section = line[2:]
        elif section == "nodes":
            path, major, minor, mode = line.split()
            seen[path] = (int(major, 16), int(minor, 16), int(mode, 8))
        elif section == "cgroup":
            allowed.append(line.split())
        elif line.startswith("NVIDIA_VISIBLE_DEVICES="):
            visible.append(line.split("=", 1)[1])
    if not allowed:
        fail(f"{label}: no device cgroup allow list (cgroup v1 devices controller needed)")
    if set(seen) != set(nodes):
        fail(f"{label}: container has {sorted(seen)}, the spec gives {sorted(nodes)}")
    for path, (host, mode) in nodes.items():
        container_path = host[len(fake["root"]):]
        if not host.startswith(fake["root"]) or container_path not in fake["nodes"]:
            fail(f"{label}: {path} comes from {host}, not the fake dev root")
            continue
        major, minor, host_mode = fake["nodes"][container_path]
        if mode != host_mode:
            fail(f"{label}: the spec gives {path} mode {mode!r}, the host node is {oct(host_mode)}")
        if path in seen and seen[path] != (major, minor, host_mode):
            got = seen[path]
            fail(f"{label}: {path} is {got[0]}:{got[1]} {oct(got[2])} inside, "
                 f"{major}:{minor} {oct(host_mode)} on the host")
        if ["c", f"{major}:{minor}", "rw"] not in allowed:
            fail(f"{label}: the device cgroup does not allow {path} ({major}:{minor})")
    granted = {tuple(entry[1].split(":")) for entry in allowed
               if entry[0] == "c" and set(entry[2]) & set("rw")}
    if ("*", "*") in granted:
        fail(f"{label}: the device cgroup allows every character device")
    for path, (major, minor, _) in fake["nodes"].items():
        if path not in nodes and (str(major), str(minor)) in granted:
            fail(f"{label}: the device cgroup allows {path}, which the container was not given")
    every_cdi = all(s.startswith("cdi-") for s in strategies.split(","))
    want = ["void"] if every_cdi else [answer["envs"].get("NVIDIA_VISIBLE_DEVICES")]
    if visible != want:
        fail(f"{label}: NVIDIA_VISIBLE_DEVICES inside is {visible}, want {want}")
    if len(failures) > failed_before:
        return
    print(f"  ok  {answer['asked']}: {' '.join(names)}: {len(seen)} nodes, "
          f"NVIDIA_VISIBLE_DEVICES={','.join(visible)}")


def main():
    if os.listdir(CDI_DIR):
        raise SystemExit(f"{CDI_DIR} is not the empty directory of this check: run it through "
                         ".ci/check-cdi-podman")
    started = time.monotonic()
    try:
        for i, (what, instance, layout, config, strategies, ids, requests) in enumerate(SCENARIOS):
            print(f"{what}:")
            scenario_dir = os.path.join(WORK, f"s{i}")
            os.makedirs(scenario_dir)
            root = os.path.join(scenario_dir, "host")
            fake = {"root": root, "nodes": make_dev_root(root, 8)}
            plugins, daemon, log = run_daemon(
                scenario_dir, root, instance, layout, config, strategies, ids)
            try:
                answers = admit(plugins, requests)
            finally:
                daemon.send_signal(signal.SIGTERM)
                code = daemon.wait(timeout=60)
                log.close()
            if code != 0:
                fail(f"{what}: the daemon exited {code} on SIGTERM "
                     f"(log: {os.path.join(scenario_dir, 'daemon.log')})")
            with open(SPEC) as f:
                spec = json.load(f)
            for answer in answers:
                names = names_of(answer, strategies)
                if not names:
                    fail(f"{what}: {answer['asked']}: the answer names no CDI device")
                    continue
                check_container(what, answer, names, spec, fake, strategies)
            os.remove(SPEC)
        # The spec of the last scenario again: a name it does not define
        # must fail container creation, not start a container without it.
        with open(SPEC, "w") as f:
            json.dump(spec, f)
        unknown = "k8s.device-plugin.nvidia.com/gpu=GPU-00000000-0000-0000-0000-000000000000"
        out = subprocess.run(PODMAN + ["--device", unknown, "--rootfs", ROOTFS, "true"],
                             capture_output=True, text=True, timeout=120)
        containers_tried = containers + 1
        if out.returncode == 0 or "unresolvable CDI devices" not in out.stderr:
            fail(f"an unknown CDI name started a container or failed otherwise "
                 f"({out.returncode}): {out.stderr.strip()}")
        else:
            print(f"  ok  {unknown}: refused ({out.stderr.strip()})")
    finally:
        if os.path.exists(SPEC):
            os.remove(SPEC)
    print(f"{containers_tried} containers in {time.monotonic() - started:.1f}s")
    if failures:
        raise SystemExit(f"{len(failures)} CDI check(s) failed")


main()
