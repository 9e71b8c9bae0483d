"""Placement: every shipped screening and training config fits every shipped cluster it may run on.

A cluster offers node types (CPUs and GPUs per node, how many nodes at most); a screening config asks for actor
pools (per-actor CPUs and GPUs, at least `actors` of them) and decode tasks, a training config for `num_workers`
workers. Each actor, task and worker must fit one node, and the minimum pools, one decode task per node and all
training workers must pack onto the cluster's nodes at once (first-fit decreasing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skinscan.config import ScreenConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SCREEN = sorted((ROOT / "configs/screen").glob("*.yaml"))
TRAIN = sorted((ROOT / "configs/train").glob("*.yaml"))
LAUNCHER = sorted((ROOT / "cluster").glob("*.yaml"))
KUBERAY = sorted(
    p
    for p in (ROOT / "cluster/kuberay").glob("*.yaml")
    if yaml.safe_load(p.read_text()).get("kind") in ("RayCluster", "RayJob")
)
EPS = 1e-9


def node_types(path: Path) -> list[dict]:
    """[{name, CPU, GPU, max}] of the worker node types of a launcher config or a KubeRay manifest."""
    doc = yaml.safe_load(path.read_text())
    if "available_node_types" in doc:
        head = doc["head_node_type"]
        return [
            {
                "name": k,
                "CPU": v["resources"].get("CPU", 0),
                "GPU": v["resources"].get("GPU", 0),
                "max": v["max_workers"],
            }
            for k, v in doc["available_node_types"].items()
            if k != head
        ]
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    out = []
    for group in spec["workerGroupSpecs"]:
        params = group.get("rayStartParams", {})
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = float(params.get("num-cpus", limits.get("cpu", 0)))
        gpu = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        out.append({"name": group["groupName"], "CPU": cpu, "GPU": gpu, "max": group["maxReplicas"]})
    return out


def pack(demands: list[dict], types: list[dict]) -> list[str]:
    """First-fit decreasing of resource demands onto the nodes; returns what did not fit."""
    nodes = [{"CPU": t["CPU"], "GPU": t["GPU"]} for t in types for _ in range(t["max"])]
    left = []
    for d in sorted(demands, key=lambda d: (d["GPU"], d["CPU"]), reverse=True):
        for n in nodes:
            if n["CPU"] + EPS >= d["CPU"] and n["GPU"] + EPS >= d["GPU"]:
                n["CPU"] -= d["CPU"]
                n["GPU"] -= d["GPU"]
                break
        else:
            left.append(d["what"])
    return left


def screen_demands(cfg: ScreenConfig, n_nodes: int) -> list[dict]:
    from skinscan.screening.pipeline import explain_in_pool

    stages = {
        "classify": cfg.classify,
        **({"segment": cfg.segment} if cfg.segmenter or cfg.segment.num_gpus else {}),
        **({"explainer": cfg.explainer} if explain_in_pool(cfg) else {}),
    }
    out = [
        {"what": f"{name} actor {i + 1}", "CPU": s.num_cpus, "GPU": s.num_gpus}
        for name, s in stages.items()
        for i in range(s.actors)
    ]
    decode = min(n_nodes, 1 if not cfg.decode.num_gpus else n_nodes)  # nvJPEG decode tasks beside every GPU
    return out + [{"what": "decode task", "CPU": cfg.decode.num_cpus, "GPU": cfg.decode.num_gpus}] * decode


def train_demands(cfg: TrainConfig) -> list[dict]:
    return [
        {"what": f"train worker {i + 1}", "CPU": cfg.threads_per_worker, "GPU": 1.0 if cfg.use_gpu else 0.0}
        for i in range(cfg.num_workers)
    ]


def _entrypoint_config(path: Path) -> Path | None:
    doc = yaml.safe_load(path.read_text())
    if doc.get("kind") != "RayJob":
        return None
    words = doc["spec"]["entrypoint"].split()
    return ROOT / words[words.index("--config") + 1]


def _pairs():
    """(config, cluster file): a RayJob runs only its own entrypoint's config; other clusters run any config."""
    for cluster in [*LAUNCHER, *KUBERAY]:
        own = _entrypoint_config(cluster)
        for config in [*SCREEN, *TRAIN]:
            if own is None or config == own:
                yield pytest.param(config, cluster, id=f"{config.parent.name}/{config.name}@{cluster.name}")


@pytest.mark.parametrize("config,cluster", list(_pairs()))
def test_config_fits_cluster(config, cluster):
    types = node_types(cluster)
    assert types, f"{cluster.name}: no worker node types"
    for t in types:
        assert t["CPU"] > 0, f"{cluster.name}: node type {t['name']} declares no CPUs (the autoscaler cannot match it)"
    n_nodes = sum(t["max"] for t in types)
    if config.parent.name == "screen":
        cfg = load_config(ScreenConfig, config)
        needs_gpu = cfg.classify.num_gpus > 0 or cfg.segment.num_gpus > 0 or cfg.decode.num_gpus > 0
        demands = screen_demands(cfg, n_nodes)
    else:
        cfg = load_config(TrainConfig, config)
        needs_gpu = cfg.use_gpu
        demands = train_demands(cfg)
    if needs_gpu and not any(t["GPU"] for t in types):
        pytest.skip(f"{config.name} asks for GPUs; {cluster.name} has none")
    for d in demands:
        assert any(t["CPU"] + EPS >= d["CPU"] and t["GPU"] + EPS >= d["GPU"] for t in types), (
            f"{config.name}: a {d['what']} needs {d['CPU']} CPU / {d['GPU']} GPU, more than any node of {cluster.name}"
        )
    left = pack(demands, types)
    assert not left, f"{config.name} on {cluster.name}: no room for {left[:4]} ({len(left)} in all)"


def test_the_gpu_screen_config_fills_a_gpu_node_exactly_once_per_stage():
    cfg = load_config(ScreenConfig, ROOT / "configs/screen/gpu_cluster.yaml")
    from skinscan.screening.pipeline import WRITE_CPUS

    per_node = [cfg.classify, cfg.segment, cfg.decode]
    # the smallest GPU node it runs on: a KubeRay pod of 7 CPUs; its write tasks need a share too
    assert sum(s.num_gpus for s in per_node) <= 1.0 + EPS and sum(s.num_cpus for s in per_node) + WRITE_CPUS <= 7
    assert cfg.classify.max_actors >= 8 and cfg.segment.max_actors >= 8  # pools grow with the cluster


def test_packing_refuses_what_does_not_fit():
    types = [{"name": "gpu", "CPU": 8, "GPU": 1, "max": 2}]
    assert pack([{"what": "a", "CPU": 4, "GPU": 1}] * 2, types) == []
    assert pack([{"what": "a", "CPU": 4, "GPU": 1}] * 3, types) == ["a"]
    assert pack([{"what": "b", "CPU": 6, "GPU": 0.5}] * 3, types) == ["b"]
