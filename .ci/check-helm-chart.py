"""Renders deploy/helm/gpu-slicer with a real Helm and checks what comes out.

Run by .ci/check-helm-chart, which installs Helm and kubernetes-validate
into a private virtual environment and passes their paths. Every values file
under the chart's ci/ folder must pass `helm lint --strict`, render, and
validate against the Kubernetes schemas of every supported minor; then each
case's rendering is checked for what its values promise (a value that
renders to nothing is a bug), and every value combination that cannot work
must fail the rendering with a message that says what to do.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HELM, VALIDATOR = sys.argv[1], sys.argv[2]
CHART = Path("deploy/helm/gpu-slicer")
NAMESPACE = "gpu-slicer"
KUBERNETES = [f"1.{minor}.0" for minor in range(26, 38)]
# Custom resources without a schema in the validator.
CRD_KINDS = {"ServiceMonitor"}
# admissionregistration.k8s.io/v1 since 1.30; the chart leaves them out
# below (checked after the cases).
POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
POLICY_SINCE = 30

failures = []


def fail(case, message):
    failures.append(f"{case}: {message}")


def helm(*args, namespace=NAMESPACE):
    return subprocess.run(
        [HELM, *args, "--namespace", namespace],
        capture_output=True,
        text=True,
    )


def render(values_file=None, sets=(), namespace=NAMESPACE):
    args = ["template", "t", str(CHART)]
    if values_file:
        args += ["-f", str(values_file)]
    for s in sets:
        args += ["--set", s]
    return helm(*args, namespace=namespace)


def objects(text):
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def plugin(docs):
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gpu-slicer"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    return ds, pod, container, env, mounts


def validate(case, text):
    docs = objects(text)
    policies = [d for d in docs if d["kind"] in POLICY_KINDS]
    others = [d for d in docs if d["kind"] not in POLICY_KINDS]
    validate_at(case, yaml.safe_dump_all(others), KUBERNETES)
    if policies:
        since = [v for v in KUBERNETES if int(v.split(".")[1]) >= POLICY_SINCE]
        validate_at(case, yaml.safe_dump_all(policies), since)


def validate_at(case, text, versions):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    args = [VALIDATOR, "--strict", "--quiet"]
    for v in versions:
        args += ["-k", v]
    out = subprocess.run(args + [f.name], capture_output=True, text=True)
    report = out.stdout + out.stderr
    if out.returncode != 0:
        fail(case, f"rejected by the Kubernetes schemas:\n{report}")
    for line in report.splitlines():
        if "Couldn't find schema" in line and not any(
            f"for kind {k} " in line for k in CRD_KINDS
        ):
            fail(case, f"no schema checked an object: {line}")
    Path(f.name).unlink()


def check_defaults(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert [d["kind"] for d in docs] == ["DaemonSet"], [d["kind"] for d in docs]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert c["args"] == ["run", "--metrics-address", "0.0.0.0:9401"], c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9401, "protocol": "TCP"}]
    assert "/var/run/cdi" in mounts and "/mps" not in mounts
    assert "NODE_NAME" not in env and "MIG_STRATEGY" not in env
    tolerations = {t["key"] for t in pod["tolerations"]}
    assert tolerations == {"nvidia.com/gpu", "CriticalAddonsOnly"}, tolerations
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    # Karpenter reads only the first required term for DaemonSet overhead.
    assert terms[0]["matchExpressions"][0]["key"] == "karpenter.k8s.aws/instance-gpu-manufacturer"
    keys = [t["matchExpressions"][0]["key"] for t in terms]
    assert "feature.node.kubernetes.io/pci-10de.present" in keys, keys
    assert "feature.node.kubernetes.io/cpu-model.vendor_id" in keys, keys


def check_nvidia(docs):
    ds, pod, c, env, mounts = plugin(docs)
    (cm,) = by_kind(docs, "ConfigMap")
    assert sorted(cm["data"]) == ["default", "mig-mixed", "time-slicing-4"], cm["data"]
    assert c["args"][:3] == ["run", "--config-dir", "/available-configs"], c["args"]
    assert mounts["/available-configs"] == "available-configs"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "available-configs"]
    assert volume["configMap"] == {"name": cm["metadata"]["name"]}, volume
    assert env["FALLBACK_STRATEGIES"] == "named,single"
    assert "DEFAULT_CONFIG" not in env
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    want = {
        "PASS_DEVICE_SPECS": "true",
        "MIG_STRATEGY": "mixed",
        "FAIL_ON_INIT_ERROR": "false",
        "DEVICE_LIST_STRATEGY": "cdi-cri",
        "DEVICE_ID_STRATEGY": "index",
        "DEVICE_DISCOVERY_STRATEGY": "nvml",
        "NVIDIA_DRIVER_ROOT": "/run/nvidia/driver",
        "NVIDIA_DEV_ROOT": "/",
        "GDRCOPY_ENABLED": "true",
        "GDS_ENABLED": "false",
        "MOFED_ENABLED": "true",
    }
    for key, value in want.items():
        assert env.get(key) == value, (key, env.get(key))
    assert "NVIDIA_CDI_HOOK_PATH" not in env
    # gfd.securityContext is NVIDIA's GFD DaemonSet's, not the plugin's.
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["securityContext"]
    assert c["image"] == "ghcr.io/gpu-slicer/gpu-slicer:0.1.0", c["image"]
    assert mounts["/driver-root"] == "driver-root"
    args = c["args"]
    assert args[args.index("--feature-file") + 1] == "/etc/kubernetes/node-feature-discovery/features.d/gpu-slicer"
    assert mounts["/etc/kubernetes/node-feature-discovery/features.d"] == "nfd-features"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["serviceAccountName"] == "t-gpu-slicer" and pod["automountServiceAccountToken"]
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "nvidia-device-plugin-daemonset"}
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "nvidia-device-plugin-daemonset" and labels["app.kubernetes.io/instance"] == "t"
    assert "checksum/config" in ds["spec"]["template"]["metadata"]["annotations"]
    (role,) = by_kind(docs, "ClusterRole")
    verbs = sorted(v for r in role["rules"] for v in r["verbs"])
    assert verbs == ["get", "list", "watch"], verbs
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "t-gpu-slicer", "namespace": NAMESPACE}
    ]
    assert by_kind(docs, "ServiceAccount")
    assert "/mps" not in mounts, "no config uses MPS"


def check_karpenter(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert not by_kind(docs, "ConfigMap"), "config.name: the chart builds no ConfigMap"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "available-configs"]
    assert volume["configMap"] == {"name": "gpu-slicer-configs"}
    assert env["DEFAULT_CONFIG"] == "mig-mixed"
    args = c["args"]
    for flag in ["--follow-mig-manager", "--startup-taint"]:
        assert flag in args, args
    assert args[args.index("--startup-taint") + 1] == "gpu-slicer.io/slicing-pending"
    assert {"key": "gpu-slicer.io/slicing-pending", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.deploy.device-plugin": "true"}
    (role,) = by_kind(docs, "ClusterRole")
    rules = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert rules == {
        ("nodes", "get"), ("nodes", "list"), ("nodes", "watch"), ("nodes", "patch"),
        ("pods", "list"), ("pods", "watch"),
    }, rules
    # followState publishes the MIG state: the kubelet's PodResources.
    assert mounts["/var/lib/kubelet/pod-resources"] == "pod-resources"
    check_node_restriction(docs, "gpu-slicer.io/slicing-pending")
    # An external ConfigMap may use MPS: mounted as NVIDIA's chart does.
    assert mounts["/mps"] == "mps-root" and mounts["/dev/shm"] == "mps-shm"
    assert "hostPID" not in pod
    (svc,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9401, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in selected.items()), selected
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def check_mps(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert env["MPS_ROOT"] == "/run/nvidia/mps" and env["MPS_CONTAINER_ROOT"] == "/mps"
    assert mounts["/mps"] == "mps-root" and mounts["/dev/shm"] == "mps-shm"
    assert pod["hostPID"] is True
    # One config: the `single` fallback picks it.
    assert env["FALLBACK_STRATEGIES"] == "named,single"
    (svc,) = by_kind(docs, "Service")
    assert not by_kind(docs, "ServiceMonitor")


def check_minimal(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert c["args"] == ["run"], c["args"]
    for key in ["livenessProbe", "readinessProbe", "ports"]:
        assert key not in c, key


def check_mig_apply(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert "--apply-mig-layouts" in c["args"] and "--follow-mig-manager" not in c["args"], c["args"]
    assert env["MIG_PARTED_CONFIG_FILE"] == "/mig-parted-config/config.yaml"
    assert env["NVIDIA_MIG_CONFIG_DEVICES"] == "all"
    assert "MIG_APPLY_FORCE" not in env
    assert "NODE_NAME" in env
    assert c["securityContext"] == {"privileged": True}, c["securityContext"]
    assert mounts["/mig-parted-config"] == "mig-parted-config"
    assert mounts["/var/lib/kubelet/pod-resources"] == "pod-resources"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mig-parted-config"]
    assert volume["configMap"] == {"name": "default-mig-parted-config"}
    (role,) = by_kind(docs, "ClusterRole")
    rules = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert rules == {
        ("nodes", "get"), ("nodes", "list"), ("nodes", "watch"), ("nodes", "patch"), ("events", "create"),
        ("pods", "list"), ("pods", "watch"),
    }, rules
    assert "PUBLISH_MIG_STATE" not in env
    check_node_restriction(docs, "gpu-slicer.io/slicing-pending")


def named(docs, kind, name):
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def check_policy(docs, name, service_account):
    """A ValidatingAdmissionPolicy `name`, bound to deny, matching only this
    release's `service_account`; returns it."""
    policy = named(docs, "ValidatingAdmissionPolicy", name)
    binding = named(docs, "ValidatingAdmissionPolicyBinding", name)
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (condition,) = policy["spec"]["matchConditions"]
    want = f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{service_account}'"
    assert condition["expression"] == want, condition
    return policy


def check_node_restriction(docs, taint):
    """The policy keys on this release's ServiceAccount and start-up taint."""
    policy = check_policy(docs, "t-gpu-slicer-node-restriction", "t-gpu-slicer")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["startupTaint"] == f"'{taint}'", variables["startupTaint"]


def check_controller(docs):
    ds, pod, c, env, mounts = plugin(docs)
    assert "--apply-mig-layouts" in c["args"], c["args"]
    (deploy,) = by_kind(docs, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert spec["serviceAccountName"] == "t-gpu-slicer-controller", spec
    assert args[args.index("--batch-idle-seconds") + 1] == "5", args
    assert args[args.index("--lease-name") + 1] == "t-gpu-slicer-controller", args
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The controller's pods are not the DaemonSet's.
    selected = ds["spec"]["selector"]["matchLabels"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selected.items()), labels
    # Least RBAC: pods list/watch; nodes get/list/watch/patch; Leases in
    # the release namespace only.
    (cluster_role,) = [
        r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "t-gpu-slicer-controller"
    ]
    rules = {(res, v) for r in cluster_role["rules"] for res in r["resources"] for v in r["verbs"]}
    want = {("pods", "list"), ("pods", "watch"), ("nodeclaims", "list"), ("nodeclaims", "watch")} | {
        ("nodes", v) for v in ["get", "list", "watch", "patch"]
    }
    (claims,) = [r for r in cluster_role["rules"] if "nodeclaims" in r["resources"]]
    assert claims["apiGroups"] == ["karpenter.sh"], claims
    assert rules == want, rules
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ], role["rules"]
    # Both policies: the daemon's, and the controller's keyed on its own
    # ServiceAccount (RBAC's node patch narrowed to the target annotation).
    check_node_restriction(docs, "gpu-slicer.io/slicing-pending")
    check_policy(docs, "t-gpu-slicer-controller-restriction", "t-gpu-slicer-controller")
    assert len(by_kind(docs, "ValidatingAdmissionPolicy")) == 2


CASES = {
    None: check_defaults,
    "nvidia-values.yaml": check_nvidia,
    "karpenter-values.yaml": check_karpenter,
    "mps-values.yaml": check_mps,
    "minimal-values.yaml": check_minimal,
    "mig-apply-values.yaml": check_mig_apply,
    "controller-values.yaml": check_controller,
}

for name, check in CASES.items():
    case = name or "defaults"
    values = CHART / "ci" / name if name else None
    lint = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    if lint.returncode != 0:
        fail(case, f"helm lint --strict failed:\n{lint.stdout}{lint.stderr}")
    out = render(values)
    if out.returncode != 0:
        fail(case, f"does not render:\n{out.stderr}")
        continue
    validate(case, out.stdout)
    try:
        check(objects(out.stdout))
    except AssertionError as e:
        fail(case, f"rendered wrong: {e!r}")

unused = {p.name for p in (CHART / "ci").glob("*.yaml")} - set(CASES)
if unused:
    fail("ci/", f"values files no case checks: {sorted(unused)}")

# The node restriction: left out before Kubernetes 1.30 and when turned
# off; the MIG state is not published when turned off.
APPLY = CHART / "ci" / "mig-apply-values.yaml"
CONTROLLER = CHART / "ci" / "controller-values.yaml"
for label, args in [
    ("Kubernetes 1.29", ["template", "t", str(CHART), "-f", str(APPLY), "--kube-version", "1.29.0"]),
    ("nodeRestriction.enabled=false", ["template", "t", str(CHART), "-f", str(APPLY), "--set", "nodeRestriction.enabled=false"]),
    ("controller on Kubernetes 1.29", ["template", "t", str(CHART), "-f", str(CONTROLLER), "--kube-version", "1.29.0"]),
    ("controller, nodeRestriction.enabled=false", ["template", "t", str(CHART), "-f", str(CONTROLLER), "--set", "nodeRestriction.enabled=false"]),
]:
    out = helm(*args)
    if out.returncode != 0:
        fail(label, f"does not render:\n{out.stderr}")
    elif any(d["kind"] in POLICY_KINDS for d in objects(out.stdout)):
        fail(label, "renders a node restriction policy")
out = helm("template", "t", str(CHART), "-f", str(APPLY), "--set", "migManager.publishState=false")
if out.returncode != 0:
    fail("migManager.publishState=false", out.stderr)
else:
    docs = objects(out.stdout)
    _, _, _, env, _ = plugin(docs)
    (role,) = by_kind(docs, "ClusterRole")
    if env.get("PUBLISH_MIG_STATE") != "false" or any("pods" in r["resources"] for r in role["rules"]):
        fail("migManager.publishState=false", "still publishes, or still may watch pods")

MAP2 = ["config.map.a=version: v1", "config.map.b=version: v1"]
# Template checks (templates/validation.yaml) and values.schema.json's
# words for a value of the wrong spelling or type, and for a key neither this
# chart nor NVIDIA's has.
BAD = [
    (["config.name=x", "config.map.a=version: v1"], "Only one of 'config.name' or 'config.map'"),
    (MAP2, "A default config must be provided"),
    (MAP2 + ["config.default=c"], 'config.default is "c", but config.map has no such key (keys: a, b)'),
    (
        ["config.map.default=version: v1", "config.map.b=version: v1", "config.fallbackStrategies={single}"],
        "the current set is [single]",
    ),
    (["config.fallbackStrategies={first}"], 'config.fallbackStrategies.0 must be one of the following: "named", "single", "empty"'),
    (["migStrategy=mixd"], 'migStrategy must be one of the following: "none", "single", "mixed"'),
    (["deviceIDStrategy=idx"], 'deviceIDStrategy must be one of the following: "uuid", "index"'),
    (["deviceListStrategy=cdi"], "deviceListStrategy: Does not match pattern"),
    (["deviceDiscoveryStrategy=gpu"], 'deviceDiscoveryStrategy must be one of the following: "auto", "nvml"'),
    (["deviceDiscoveryStrategy=tegra"], "Tegra's integrated GPUs (Jetson, IGX) are not NVML devices"),
    (["string:failOnInitError=true"], "failOnInitError: Invalid type. Expected: [boolean,null], given: string"),
    (["string:compatWithCPUManager=yes"], "compatWithCPUManager: Invalid type. Expected: [boolean,null], given: string"),
    (["nvidiaDriverRoot=run/nvidia/driver"], "nvidiaDriverRoot: Does not match pattern '^/'"),
    (["image.pullPolicy=Sometimes"], "image.pullPolicy must be one of the following"),
    (["metrics.port=0"], "metrics.port: Must be greater than or equal to 1"),
    (["migStratgy=mixed"], "(root): Additional property migStratgy is not allowed"),
    (["metrics.prot=9402"], "metrics: Additional property prot is not allowed"),
    (["readinessProbe.initialDelaySeconds=5"], "readinessProbe: Additional property initialDelaySeconds is not allowed"),
    (["gfd.sleepIntervall=60s"], "gfd: Additional property sleepIntervall is not allowed"),
    (["cdi.nvidiaHookPath=/usr/bin/nvidia-cdi-hook"], "Remove cdi.nvidiaHookPath"),
    (["mps.enableHostNetwork=true"], "set devicePlugin.enableHostNetwork=true"),
    (["image.repository=nvcr.io/nvidia/k8s-device-plugin"], "NVIDIA's device plugin image"),
    (["config.map.Bad Name=version: v1"], "cannot be a value of the node label"),
    (["cdi.featureFlags=x"], "Remove cdi.featureFlags"),
    (["metrics.enabled=false"], "set metrics.enabled=true, or disable the probes"),
    (
        ["metrics.enabled=false", "livenessProbe.enabled=false", "readinessProbe.enabled=false", "metrics.serviceMonitor.enabled=true"],
        "metrics.service and metrics.serviceMonitor need the endpoint",
    ),
    (["startupTaint=a/b:NoSchedule"], "give the key only"),
    (["namespace=x"], "Value 'namespace' set to x"),
    (["devicePlugin.enabled=false"], "uninstall the chart instead"),
    (["migManager.apply=true", "migManager.followState=true"], "migManager.apply and migManager.followState exclude each other"),
    (["migManager.force=true"], "set migManager.apply=true, or remove them"),
    (["gfd.enabled=true"], "set featureFile.enabled=true instead of gfd.enabled"),
    (["nfd.enabled=true"], "Remove nfd.enabled"),
]
def set_flag(s):
    """`string:k=v` and config.map's texts are strings; the rest as typed."""
    if s.startswith("string:"):
        return ("--set-string", s.removeprefix("string:"))
    return ("--set-string" if "config.map." in s else "--set", s)


for sets, message in BAD:
    out = subprocess.run(
        [HELM, "template", "t", str(CHART), "--namespace", NAMESPACE]
        + [a for s in sets for a in set_flag(s)],
        capture_output=True,
        text=True,
    )
    if out.returncode == 0:
        fail(f"--set {sets}", "rendered; it must fail")
    elif message not in out.stderr:
        fail(f"--set {sets}", f"fails without saying {message!r}:\n{out.stderr}")

out = render(namespace="default")
if out.returncode == 0 or "allowDefaultNamespace=true" not in out.stderr:
    fail("namespace default", f"must be refused unless allowDefaultNamespace:\n{out.stderr}")
out = render(sets=["allowDefaultNamespace=true"], namespace="default")
if out.returncode != 0:
    fail("namespace default, allowed", out.stderr)

if failures:
    print("\n\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(
    f"check-helm-chart: {len(CASES)} value sets lint, render and validate for Kubernetes "
    f"{KUBERNETES[0]}..{KUBERNETES[-1]}; {len(BAD) + 1} bad value sets refused with their message"
)
