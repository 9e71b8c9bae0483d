"""Shipped cluster configs are valid and secure; a real local Ray cluster runs a submitted screening job."""

import functools
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.rglob("*.yaml"))
SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",
    r"aws_secret_access_key\s*[:=]",
    r"BEGIN [A-Z ]*PRIVATE KEY",
    r"password\s*[:=]\s*\S+",
    r"RAY_AUTH_TOKEN\s*[:=]\s*[0-9a-f]{16,}",
]


def test_every_shipped_yaml_parses():
    assert len(YAMLS) >= 5
    for f in [*YAMLS, *sorted((ROOT / "configs").rglob("*.yaml"))]:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f


@pytest.mark.parametrize("path", [p for p in YAMLS if p.parent == CLUSTER], ids=lambda p: p.name)
def test_launcher_configs(path):
    cfg = yaml.safe_load(path.read_text())
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "max_workers",
    ):
        assert key in cfg, f"{path.name}: missing {key}"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no work may be scheduled on the head"
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert workers and all(w["max_workers"] > 0 for w in workers)
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)


RAY_VERSION = "2.60.0"
LAUNCHER_SCHEMA = Path(__import__("ray").__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.mark.parametrize("path", [p for p in YAMLS if p.parent == CLUSTER], ids=lambda p: p.name)
def test_launcher_configs_pass_rays_schema_and_start_rules(path):
    """What `ray up` would refuse, and what would make a started cluster fail: no token on the nodes, node types
    the autoscaler cannot match, a Ray on later workers other than the head's, local clutter synced up."""
    import json

    import jsonschema

    cfg = yaml.safe_load(path.read_text())
    jsonschema.validate(cfg, json.loads(LAUNCHER_SCHEMA.read_text()))
    init = " ".join(cfg.get("initialization_commands", []))
    assert "~/.ray/auth_token" in init and ("secretsmanager get-secret-value" in init or "gcloud secrets" in init)
    assert "umask 077" in init, "the token file must be readable by its user only"
    for cmd in [*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd and "RAY_AUTH_TOKEN_PATH=~/.ray/auth_token" in cmd, cmd
    setup = " ".join(cfg["setup_commands"])
    assert "-c constraints.txt" in setup and "venv" in setup, "every node installs the lock, into a venv"
    for cmd in [*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]]:
        assert "~/venv/bin" in cmd, f"Ray must start from the venv: {cmd}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"ray[data,train,default]>={RAY_VERSION},<2.61" in pyproject
    for name, node in cfg["available_node_types"].items():
        res = node["resources"]
        assert "CPU" in res, f"{name}: resources must be explicit (GCP fills in none)"
        if name != cfg["head_node_type"]:
            assert res["CPU"] > 0 and res.get("GPU", 0) >= 1, f"{name}: a GPU worker declares its CPUs and GPUs"
    if cfg["provider"]["type"] == "gcp":
        gpu = cfg["available_node_types"]["gpu_worker"]["node_config"]
        assert {"key": "install-nvidia-driver", "value": "True"} in gpu["metadata"]["items"]
    assert ".gitignore" in cfg["rsync_filter"] and {".venv", "runs"} <= set(cfg["rsync_exclude"])


def _head_specs(doc):
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return spec["headGroupSpec"], spec["workerGroupSpecs"]


RAY_MANIFESTS = [
    p
    for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))
    if yaml.safe_load(p.read_text())["apiVersion"] == "ray.io/v1"
]
CRDS = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifests(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob") and doc["metadata"]["name"]
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token", "secretName": "skinscan-ray-token"}, "token for every container"
    head, workers = _head_specs(doc)
    assert head["rayStartParams"]["num-cpus"] == "0"
    if doc["kind"] == "RayJob":  # the operator polls job status through the head Service: a policy, not loopback
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        policy = yaml.safe_load((CLUSTER / "kuberay" / "networkpolicy.yaml").read_text())
        labels = policy["spec"]["podSelector"]["matchLabels"]
        for group in [head, *workers]:
            assert labels.items() <= group["template"]["metadata"]["labels"].items(), "the policy must cover every pod"
        assert doc["spec"]["entrypoint"].startswith("python -m jobs.")
        assert (ROOT / (doc["spec"]["entrypoint"].split()[2].replace(".", "/") + ".py")).exists()
        config = yaml.safe_load((ROOT / doc["spec"]["entrypoint"].split()[-1]).read_text())
        for key in ("output", "model", "segmenter", "storage_path"):  # the pods go away after the job
            if isinstance(config.get(key), str):
                assert config[key].startswith("s3://"), f"{key} must be on object storage, not in the pod"
    else:
        assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for group in [head, *workers]:
        for c in group["template"]["spec"]["containers"]:
            assert not any(e["name"].startswith("AWS_") for e in c.get("env", [])), "no credentials in pods"


def _strict(schema):
    """The CRD's OpenAPI schema with unknown fields refused, as the API server's pruning would drop them silently."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if k != "x-kubernetes-int-or-string"}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_validator(kind: str, version: str):
    """A validator of one CRD version's schema, made once: the CRDs are ~1 MB of YAML each (read with libyaml), and
    `jsonschema.validate` would check the schema itself against the meta-schema on every call."""
    import jsonschema

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = _strict(found["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the API server's, not in the CRD
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifests_validate_against_the_v1_7_crds(path):
    import jsonschema

    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    doc = yaml.safe_load(path.read_text())
    validator = _crd_validator(doc["kind"], doc["apiVersion"].split("/")[1])
    validator.validate(doc)
    broken = yaml.safe_load(path.read_text())
    spec = broken["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else broken["spec"]
    spec["authOptions"]["mdoe"] = "token"  # a misspelt field is refused, not ignored
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


# what the documented node types leave for pods (EKS: capacity minus kube-reserved and eviction threshold)
ALLOCATABLE = {"m5.xlarge": {"cpu": 3.92, "memory_gi": 14.3}, "g5.2xlarge": {"cpu": 7.91, "memory_gi": 29.6}}
NODE_OF = {"head": "m5.xlarge", "worker": "g5.2xlarge"}  # as the manifests' headers state


def _quantity(v, memory: bool = False) -> float:
    """A Kubernetes quantity: CPUs, or GiB for memory (plain numbers are bytes there)."""
    v = str(v)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, scale in units.items():
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * scale / 2**30
    if v.endswith("m"):
        return float(v[:-1]) / 1000
    return float(v) / 2**30 if memory else float(v)


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_pods_fit_the_documented_nodes(path):
    """A pod that asks for the whole node (8 CPU / 32Gi on an 8-vCPU, 32 GiB node) stays Pending forever."""
    doc = yaml.safe_load(path.read_text())
    head, workers = _head_specs(doc)
    text = path.read_text()
    for role, groups in (("head", [head]), ("worker", workers)):
        node = ALLOCATABLE[NODE_OF[role]]
        assert NODE_OF[role] in text, f"{path.name} does not name the node type its {role} pods are sized for"
        for group in groups:
            for c in group["template"]["spec"]["containers"]:
                res = c["resources"]
                # a resource without a request is requested at its limit
                asked = {k: res.get("requests", {}).get(k, res.get("limits", {}).get(k)) for k in ("cpu", "memory")}
                assert _quantity(asked["cpu"]) <= node["cpu"]
                assert _quantity(asked["memory"], memory=True) <= node["memory_gi"]
                if role == "worker":  # Ray schedules by what it is told: no more CPUs than the pod has
                    assert float(group["rayStartParams"]["num-cpus"]) <= _quantity(asked["cpu"])


def test_every_service_account_a_manifest_names_is_shipped():
    defined = {
        d["metadata"]["name"]
        for p in (CLUSTER / "kuberay").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "ServiceAccount"
    }
    for path in RAY_MANIFESTS:
        head, workers = _head_specs(yaml.safe_load(path.read_text()))
        for group in [head, *workers]:
            assert group["template"]["spec"]["serviceAccountName"] in defined, path.name


MIN_DRIVER = {12: 525, 13: 580}  # NVIDIA's minimum Linux driver for each CUDA major version


def test_node_images_have_a_driver_for_the_locked_torch():
    """torch's wheel is built for one CUDA major; a node driver older than that major's minimum cannot run it."""
    lock = (ROOT / "constraints.txt").read_text()
    torch_version = re.search(r"^torch==(\S+)", lock, re.M).group(1)
    assert torch_version == "2.14.1", "a new torch: check which CUDA its wheels are built for, then update this test"
    need = MIN_DRIVER[13]  # torch 2.14.1's default Linux wheels: CUDA 13.0
    gcp = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())
    for name, t in gcp["available_node_types"].items():
        for disk in t["node_config"]["disks"]:
            family = disk["initializeParams"]["sourceImage"]
            found = re.search(r"nvidia-(\d+)", family)
            assert found and int(found.group(1)) >= need, f"gcp.yaml {name}: {family} has no driver >= {need}"
        if "scheduling" in t["node_config"]:
            assert isinstance(t["node_config"]["scheduling"], dict), "GCP's scheduling is a mapping, not a list"
    aws = (CLUSTER / "aws.yaml").read_text()
    assert all(
        f"driver >= {need}" in line or "(>= " + str(need) in line for line in aws.splitlines() if "ImageId:" in line
    )
    for path in [*RAY_MANIFESTS, ROOT / "docs" / "cluster.md"]:
        assert f"driver is >= {need}" in path.read_text() or f"driver >= {need}" in path.read_text(), path.name


def test_dockerfile_pins_and_runs_as_non_root():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY_VERSION}-py311-gpu" in text and "USER ray" in text
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), "the image installs the lock"
    assert "AS tensorrt" in text and "USER root" not in text


def test_every_install_is_the_lock():
    """One environment: the README's commands, CI, the image and the launcher nodes install constraints.txt, which
    pins every package of every extra (Ray at the cluster files' version, torch at the tested release)."""
    import re

    lock = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().split("\n")
        if line and not line.startswith("#") and "==" in line
    )
    lock = {k: v.split()[0] for k, v in lock.items()}
    assert lock["ray"] == RAY_VERSION and lock["torch"] == "2.14.1"
    assert int(lock["pandas"].split(".")[0]) >= 3, "the lock takes what a plain install takes"
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    assert len(commands) >= 2 and all("-c constraints.txt" in c for c in commands), commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run runs the README's test command"
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *(d for ds in project["optional-dependencies"].values() for d in ds)]
    for dep in names:
        name = re.split(r"[<>=!\[; ]", dep, maxsplit=1)[0].lower()
        assert name in lock, f"{name} is not in constraints.txt: run bash .ci/lock"
    assert not any("pandas<3" in d for d in names), "no extra caps pandas below what the lock holds"


def test_no_public_binding_and_no_credentials():
    for f in [*YAMLS, CLUSTER / "local.sh"]:
        text = f.read_text()
        if "RayJob" not in text:  # RayJobs bind pod interfaces for the operator, behind networkpolicy.yaml
            assert "0.0.0.0" not in text, f"{f.name} binds to all interfaces"
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, text, re.I), f"{f.name} looks like it holds a credential ({pattern})"
    script = (CLUSTER / "local.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in script and "RAY_AUTH_MODE=token" in script


# ---------------------------------------------------------------- a real local cluster


def _ports() -> int:
    """RAY_PORT .. +9 for the cluster's services and +1000 for its job API."""
    from tests.conftest import free_port_base

    return free_port_base((*range(10), 1000), 20000, 29000)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory, _seaweed):
    """A head and a worker started by cluster/local.sh; the nodes get S3 credentials when they start (as a cloud
    node gets its instance profile), never from a job."""
    from conftest import local_cluster_pids, s3_node_environment

    base = _ports()
    tmp = tmp_path_factory.mktemp("cluster")
    env = {
        **os.environ,
        **(s3_node_environment(_seaweed[0]) if _seaweed else {}),
        "RAY_BIN": str(Path(sys.executable).parent / "ray"),
        "RAY_PORT": str(base),
        "RAY_DASHBOARD_PORT": str(base + 1000),
        "SKINSCAN_RAY_TEMP": f"/tmp/skr-{base}",
        "RAY_AUTH_TOKEN_PATH": str(tmp / "token"),
        "WORKER_CPUS": "2",
    }
    env.pop("RAY_ADDRESS", None)
    script = str(CLUSTER / "local.sh")
    up = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        yield f"http://127.0.0.1:{base + 1000}", env
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=120)
        assert not local_cluster_pids(f"/tmp/skr-{base}"), "cluster processes left running"


def _skinscan(env, *args, timeout=600):
    env = {**env, "RAY_AUTH_MODE": "token"}
    return subprocess.run(
        [sys.executable, "-m", "skinscan.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.slow
def test_unauthenticated_submission_is_refused(local_cluster):
    address, _ = local_cluster
    req = urllib.request.Request(
        f"{address}/api/jobs/",
        data=b'{"entrypoint": "echo pwned"}',
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code in (401, 403)


@pytest.mark.slow
def test_submit_refuses_bad_configs_and_reports_failed_jobs(local_cluster, tiny_bundles, synth_zip, tmp_path):
    address, env = local_cluster
    out = tmp_path / "screen"
    cfg = tmp_path / "screen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_bundles["swin"]),
                "input": f"zip://images::{synth_zip}",
                "output": str(out),
                "progress": False,
            }
        )
    )
    # a job that succeeds: tests/test_readme.py submits one as the README's walkthrough does
    bad = _skinscan(env, "submit", "screen", "--address", address, "--config", str(cfg), "--set", "explain=maybe")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "config key explain" in bad.stderr

    fails = _skinscan(
        env,
        "submit",
        "screen",
        "--address",
        address,
        "--config",
        str(cfg),
        "--set",
        f"model={tmp_path / 'no-such-bundle'}",
        "--follow",
    )
    reason = fails.stderr.strip().splitlines()[-1]  # the job's own logs stream to stdout while following
    assert fails.returncode != 0 and reason.startswith("skinscan: error: job ") and "FAILED" in reason
    assert "not a model bundle" in reason

    listed = _skinscan(env, "jobs", "list", "--address", address)
    assert listed.returncode == 0 and "FAILED" in listed.stdout and not out.exists()


@pytest.mark.slow
def test_credentials_stay_on_the_submitting_machine(local_cluster, s3_server, tiny_bundles, synth_zip, tmp_path):
    """A canary secret in the submitter's environment appears nowhere in the job record, the runtime envs or the
    job's logs, while the job reads its S3 input with the nodes' own credentials."""
    import secrets

    from ray.job_submission import JobSubmissionClient

    address, env = local_cluster
    endpoint, fs = s3_server
    fs.put(str(synth_zip), "skinscan-test/canary/synth.zip")
    canary = f"canary-{secrets.token_hex(12)}"
    submitter = {
        **env,
        "AWS_ACCESS_KEY_ID": f"{canary}-id",
        "AWS_SECRET_ACCESS_KEY": canary,
        "AWS_SESSION_TOKEN": f"{canary}-session",
        "GOOGLE_APPLICATION_CREDENTIALS": f"/secrets/{canary}.json",
        "AWS_ENDPOINT_URL": endpoint,
    }
    cfg = tmp_path / "screen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_bundles["swin"]),
                "input": "zip://images::s3://skinscan-test/canary/synth.zip",
                "output": str(tmp_path / "out"),
                "progress": False,
            }
        )
    )
    run = _skinscan(submitter, "submit", "screen", "--address", address, "--config", str(cfg), "--follow")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "out" / "results")) == 120  # the S3 input was read, by the nodes
    job_id = next(line.split()[-1] for line in run.stdout.splitlines() if line.startswith("submitted screen as"))
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    record = repr(client.get_job_info(job_id)) + repr(client.list_jobs())
    logs = client.get_job_logs(job_id)
    runtime_envs = subprocess.run(
        [env["RAY_BIN"], "list", "runtime-envs", "--detail", "--address", f"127.0.0.1:{env['RAY_PORT']}"],
        env={**env, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert runtime_envs.returncode == 0, runtime_envs.stderr[-1000:]
    assert endpoint in record, "the allow-listed endpoint travels, so the record was read"
    for where, text in {"job record": record, "job logs": logs, "runtime envs": runtime_envs.stdout}.items():
        assert canary not in text, f"the canary secret leaked into the {where}"
