"""Host <-> device transfers of the GPU predictors: a batch goes in micro-batches, each copied from a reused pinned
host buffer on a copy stream while the previous one computes, its outputs copied back into pinned buffers without
waiting, and one synchronisation per batch. From pageable memory a copy is synchronous and half as fast, and the
GPU idles while it runs. On a CPU device the same micro-batches run without buffers or streams (what the tests
check; the overlap itself is measured by `skinscan/bench/device_check.py`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MICRO_BATCH = 128
"""Rows per micro-batch: an H200 runs Swin-T (compile, fp16) at 11,363 img/s at batch 128 against 11,705 at 256 and
10,347 at 64 (conversion/results/gpu_check_h200.json), so a 256-row batch in two halves loses ~3% of compute and
hides one of its two copies."""


class Staging:
    """Pinned host buffers, grown as batches need and kept for the actor's life, and two streams of its own: the
    copy stream and the compute stream (not the default stream, on which TensorRT's enqueue synchronises)."""

    def __init__(self, device, micro_batch: int = MICRO_BATCH):
        import torch

        self.torch, self.device, self.micro = torch, device, micro_batch
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.compute_stream = torch.cuda.Stream(device) if self.cuda else None
        self._host: dict[str, object] = {}

    def _pinned(self, key: str, shape: tuple, dtype) -> object:
        t = self.torch
        buf = self._host.get(key)
        n = int(np.prod(shape))
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = t.empty(max(n, 1), dtype=dtype, pin_memory=True)
            self._host[key] = buf
        return buf[:n].view(shape)

    def run(self, fn: Callable, xs: Sequence[np.ndarray], dtypes: Sequence) -> list[np.ndarray]:
        """`fn(*device_tensors) -> device tensors` over `xs` (arrays of one batch, same length) in micro-batches,
        each input cast to its `dtypes` entry (None: as it is) on the device; the outputs concatenated, as float32
        numpy arrays. On a GPU every micro-batch has `micro` rows (the last padded with zeros, its outputs dropped):
        one shape for torch.compile and TensorRT profiles. `fn` queues its work on the current stream."""
        t = self.torch
        n = len(xs[0])
        slices = [slice(i, min(i + self.micro, n)) for i in range(0, n, self.micro)] or [slice(0, 0)]
        if not self.cuda:
            with t.inference_mode():
                outs = [
                    fn(*(_to(t.from_numpy(np.ascontiguousarray(x[s])), self.device, d) for x, d in zip(xs, dtypes)))
                    for s in slices
                ]
            return [t.cat([o[k] for o in outs]).float().numpy() for k in range(len(outs[0]))]
        padded = len(slices) * self.micro
        hosts = [self._pinned(f"in{k}", (padded, *x.shape[1:]), t.from_numpy(x[:0]).dtype) for k, x in enumerate(xs)]
        results: list = []
        with t.inference_mode(), t.cuda.stream(self.compute_stream):
            for s in slices:
                full = slice(s.start, s.start + self.micro)
                for h, x in zip(hosts, xs):  # into pinned memory (the CPU runs ahead while the GPU computes)
                    h.numpy()[s] = x[s]
                    if s.stop < full.stop:
                        h.numpy()[s.stop : full.stop] = 0
                with t.cuda.stream(self.copy_stream):
                    dev = [_to(h[full], self.device, d, non_blocking=True) for h, d in zip(hosts, dtypes)]
                self.compute_stream.wait_stream(self.copy_stream)  # this micro-batch's copy, not the next one's
                for d in dev:
                    d.record_stream(self.compute_stream)  # not reused by the allocator before the compute ends
                outs = fn(*dev)
                if not results:
                    results = [self._pinned(f"out{k}", (padded, *o.shape[1:]), t.float32) for k, o in enumerate(outs)]
                for r, o in zip(results, outs):
                    r[full].copy_(o.float(), non_blocking=True)
        self.compute_stream.synchronize()  # once a batch: the outputs are on the host
        return [r[:n].numpy().copy() for r in results]  # the pinned buffers serve the next batch


def _to(x, device, dtype, non_blocking: bool = False):
    return x.to(device=device, non_blocking=non_blocking) if dtype is None else x.to(device, dtype, non_blocking)
