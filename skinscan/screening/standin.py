"""Stand-in stages for capacity work: the real pipeline (listing, resume, Ray Data, writers, counting) with decode
and classify replaced by stages that sleep for a configured time instead of reading and computing. A sleeping stage
costs no CPU, so one machine can stand in for a fleet: what is left is the cost of SkinScan and Ray themselves.

Rows are well-formed (`schema.SCHEMA`; status ok, one class, no maps) so counting, resume and reports read them as
they read real ones. Nothing here imports torch: an actor is a small process, and hundreds fit in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from skinscan.screening.schema import PROB_COLUMNS, SCHEMA_VERSION


@dataclass(frozen=True)
class StandIn:
    """Seconds per decoded image (a CPU decode task) and per classified batch (an accelerator's forward pass)."""

    decode_s_per_image: float = 0.0
    classify_s_per_batch: float = 0.0


def stand_in_decode(batch: dict, s_per_image: float) -> dict:
    """What `decode_batch` emits, without reading: every input ok, a 1-pixel image."""
    n = len(batch["uri"])
    time.sleep(s_per_image * n)
    obj = lambda v: np.asarray(v, dtype=object)  # noqa: E731
    return {
        "image_id": obj(batch["image_id"]),
        "uri": obj(batch["uri"]),
        "sha256": obj([None] * n),
        "status": obj(["ok"] * n),
        "error_type": obj([None] * n),
        "error_message": obj([None] * n),
        "width": np.ones(n),
        "height": np.ones(n),
        "work": np.zeros((n, 1, 1, 3), np.uint8),
        "t_decode_ms": np.full(n, 1000 * s_per_image, np.float32),
    }


class StandInClassify:
    """What `ClassifyStage` emits: class NV with probability 1, never flagged; sleeps once per batch."""

    def __init__(self, s_per_batch: float, model_id: str = "stand-in"):
        import ray

        self.s_per_batch, self.model_id = s_per_batch, model_id
        ctx = ray.get_runtime_context()
        self.node_id, self.actor_id = ctx.get_node_id(), ctx.get_actor_id()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["uri"])
        time.sleep(self.s_per_batch)
        probs = {c: np.full(n, 1.0 if c == "prob_NV" else 0.0, np.float32) for c in PROB_COLUMNS}
        obj = lambda v: np.asarray([v] * n, dtype=object)  # noqa: E731
        out = {k: v for k, v in batch.items() if k != "work"}
        out.update(
            {
                "schema_version": np.full(n, SCHEMA_VERSION, np.int32),
                "predicted_class": obj("NV"),
                "confidence": np.ones(n, np.float32),
                **probs,
                "flagged": np.zeros(n, bool),
                "flag_rule": obj("stand-in"),
                "metadata_used": np.zeros(n, bool),
                "model_id": obj(self.model_id),
                "backend": obj("stand-in"),
                "node_id": obj(self.node_id),
                "actor_id": obj(self.actor_id),
                "t_classify_ms": np.full(n, 1000 * self.s_per_batch / max(1, n), np.float32),
            }
        )
        return out
