#!/usr/bin/env python3
"""Writes the simulate traces of this directory (deterministic: fixed seeds).

Each trace is a v1 List of Nodes and Pods as `kubectl get nodes,pods -o yaml`
prints them, with gpu-slicer's trace annotations on the Pods:
  gpu-slicer.io/simulate-arrival-seconds  when the pod becomes pending
  gpu-slicer.io/simulate-run-seconds      how long it runs once bound
                                          (for a running pod: how long it still runs)

    python3 examples/simulate/generate.py   # rewrites the three YAML files
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ARRIVAL = "gpu-slicer.io/simulate-arrival-seconds"
RUN = "gpu-slicer.io/simulate-run-seconds"


def node(name, instance_type, mig_config, capacity):
    caps = "".join(f'\n      nvidia.com/mig-{p}: "{n}"' for p, n in capacity.items())
    return f"""- apiVersion: v1
  kind: Node
  metadata:
    name: {name}
    labels:
      kubernetes.io/hostname: {name}
      node.kubernetes.io/instance-type: {instance_type}
      karpenter.sh/nodepool: gpu-slices
      nvidia.com/mig.config: {mig_config}
  status:
    capacity:{caps}
    allocatable:{caps}
"""


def pod(name, namespace, profile, arrival, run, node_name=None, image="registry.example/model:1"):
    spec_node = f"\n    nodeName: {node_name}" if node_name else ""
    phase = "Running" if node_name else "Pending"
    ann = f'\n      {RUN}: "{run}"'
    if not node_name:
        ann = f'\n      {ARRIVAL}: "{arrival}"' + ann
    return f"""- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}
    namespace: {namespace}
    annotations:{ann}
  spec:{spec_node}
    containers:
    - name: main
      image: {image}
      resources:
        limits:
          nvidia.com/mig-{profile}: "1"
        requests:
          nvidia.com/mig-{profile}: "1"
  status:
    phase: {phase}
"""


def write(file, header, items):
    with open(os.path.join(HERE, file), "w") as f:
        f.write(header)
        f.write('apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: ""\nitems:\n')
        f.write("".join(items))


def shift():
    """Two p4d.24xlarge cut all-1g.5gb for inference; in the afternoon
    fine-tuning jobs asking for 3g.20gb arrive while inference thins out."""
    rng = random.Random(24)
    nodes = ["ip-10-0-1-11.ec2.internal", "ip-10-0-1-12.ec2.internal"]
    items = [node(n, "p4d.24xlarge", "all-1g.5gb", {"1g.5gb": 56}) for n in nodes]
    k = 0
    # 96 of the 112 slices busy at the start, each for 5-120 more minutes.
    for i, n in enumerate(nodes):
        for _ in range(48):
            items.append(pod(f"infer-{k:03d}", "inference", "1g.5gb", 0,
                             rng.randrange(5, 121) * 60, node_name=n))
            k += 1
    # Inference keeps coming, more slowly: one every 4 minutes, 20-60 min each.
    t = 0
    while t < 4 * 3600:
        t += int(rng.expovariate(1 / 240))
        items.append(pod(f"infer-{k:03d}", "inference", "1g.5gb", t, rng.randrange(20, 61) * 60))
        k += 1
    # 14 fine-tuning jobs between minute 30 and 120, 45-90 min each.
    for j in range(14):
        items.append(pod(f"finetune-{j:02d}", "training", "3g.20gb",
                         rng.randrange(30, 121) * 60, rng.randrange(45, 91) * 60))
    write("shift-to-3g.yaml",
          "# Two p4d.24xlarge cut all-1g.5gb; inference thins out while fine-tuning\n"
          "# jobs asking for 3g.20gb arrive. Written by generate.py.\n", items)


def mixed():
    """Two p5.48xlarge in the balanced layout serving a mixed stream of
    1g/2g/3g requests whose mix is not the layout's."""
    rng = random.Random(7)
    nodes = ["ip-10-0-2-21.ec2.internal", "ip-10-0-2-22.ec2.internal"]
    cap = {"1g.10gb": 16, "2g.20gb": 8, "3g.40gb": 8}
    items = [node(n, "p5.48xlarge", "all-balanced", cap) for n in nodes]
    k = 0
    # About half the slices busy at the start.
    for n in nodes:
        for profile, count in (("1g.10gb", 12), ("2g.20gb", 4), ("3g.40gb", 3)):
            for _ in range(count):
                items.append(pod(f"svc-{k:03d}", "serving", profile, 0,
                                 rng.randrange(5, 91) * 60, node_name=n))
                k += 1
    # Four hours of arrivals, one every 40 s on average: 70 % 1g, 20 % 2g, 10 % 3g.
    runs = {"1g.10gb": (20, 60), "2g.20gb": (20, 60), "3g.40gb": (30, 90)}
    t = 0
    while t < 4 * 3600:
        t += int(rng.expovariate(1 / 40))
        r = rng.random()
        profile = "1g.10gb" if r < 0.70 else "2g.20gb" if r < 0.90 else "3g.40gb"
        lo, hi = runs[profile]
        items.append(pod(f"job-{k:03d}", "batch", profile, t, rng.randrange(lo, hi + 1) * 60))
        k += 1
    write("mixed.yaml",
          "# Two p5.48xlarge in the balanced layout (2 x 1g.10gb, 2g.20gb, 3g.40gb per GPU)\n"
          "# under a stream of 1g/2g/3g requests, 70/20/10 %. Written by generate.py.\n", items)


def burst():
    """One p5en.48xlarge cut all-3g.71gb for training; a morning burst of
    notebooks asking for 1g.18gb."""
    rng = random.Random(3)
    name = "ip-10-0-3-31.ec2.internal"
    items = [node(name, "p5en.48xlarge", "all-3g.71gb", {"3g.71gb": 16})]
    # Ten of the 16 3g instances train for 1-4 more hours.
    for k in range(10):
        items.append(pod(f"train-{k:02d}", "training", "3g.71gb", 0,
                         rng.randrange(60, 241) * 60, node_name=name))
    # 30 notebooks in the first 20 minutes, 30-120 min each.
    for k in range(30):
        items.append(pod(f"notebook-{k:02d}", "notebooks", "1g.18gb",
                         rng.randrange(0, 20 * 60), rng.randrange(30, 121) * 60))
    # Two more training jobs later on.
    for k in range(2):
        items.append(pod(f"train-{10 + k:02d}", "training", "3g.71gb",
                         rng.randrange(60, 180) * 60, rng.randrange(60, 121) * 60))
    write("h200-notebooks.yaml",
          "# One p5en.48xlarge (8 x H200) cut all-3g.71gb for training; a morning burst\n"
          "# of notebooks asks for 1g.18gb. Written by generate.py.\n", items)


shift()
mixed()
burst()
