"""A screening run on a real multi-node Ray cluster on loopback (Ray's own harness, `ray.cluster_utils.Cluster`):
a head with 0 CPUs and 3 worker nodes; inputs, models and results on S3. Once the first parts are written, the
worker node of one classifier actor is removed (`remove_node`); if the run does not finish, it is run again.

Run in a subprocess by tests/test_multinode.py (one process can join only one Ray cluster):
    python tests/multinode_screen.py CONFIG_JSON RESULT_JSON
The nodes read S3 with the credentials in the environment they start with, as the other test clusters do.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def remove_a_classifier_node(cluster, workers: list, output: str, removed: list, timeout: float = 300) -> None:
    """Once the first part is written, remove the worker node whose classifier actor made its rows (read from the
    rows' `node_id`: no dashboard needed), recording how many parts existed then; errors are recorded, not lost."""
    from skinscan.screening.writer import list_parts, read_results

    by_id = {w.node_id: w for w in workers}
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if list_parts(output):
                for node_id in read_results(output, ["node_id"]).column("node_id").to_pylist():
                    if node_id in by_id:
                        cluster.remove_node(by_id[node_id])
                        removed.append({"node_id": node_id, "parts_before": len(list_parts(output))})
                        return
        except Exception as err:  # noqa: BLE001 - reported in the result file
            removed.append({"error": f"{type(err).__name__}: {err}"})
            return
        time.sleep(0.05)


def main(cfg_path: str, result_path: str) -> None:
    import os
    import tempfile

    # a loopback cluster: Ray would otherwise give every node this machine's outward IP (see docs/cluster.md)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    token = Path(tempfile.mkdtemp()) / "token"
    token.write_text(os.urandom(32).hex())
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    import ray
    from ray.cluster_utils import Cluster

    from skinscan.config import ScreenConfig, validate
    from skinscan.screening.pipeline import screen

    cfg = validate(ScreenConfig, json.loads(open(cfg_path).read()))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    removed: list = []
    th = threading.Thread(target=remove_a_classifier_node, args=(cluster, workers, cfg.output, removed), daemon=True)
    th.start()
    runs = []
    for _ in range(2):
        try:
            s = screen(cfg)
            runs.append({"complete": s["complete"], "this_run_rows": s["this_run_rows"], "rows": s["rows"]})
            if s["complete"]:
                break
        except Exception as err:  # noqa: BLE001 - a run that dies with the node is rerun, as a user would
            runs.append({"error": f"{type(err).__name__}: {str(err)[:300]}"})
        th.join(timeout=60)
    nodes = [n["NodeID"] for n in ray.nodes()]
    json.dump({"runs": runs, "removed": removed, "nodes": nodes}, open(result_path, "w"))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
