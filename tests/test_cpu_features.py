"""bf16 autocast only where the CPU has bf16 instructions: emulated bf16 was 3.6x slower than fp32 per step."""

import builtins
import io

import torch

from skinscan.training import loop


def _cpuinfo(monkeypatch, flags: str) -> None:
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            return io.StringIO(f"processor\t: 0\nflags\t\t: {flags}\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_bf16_autocast_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # what oneDNN says on AVX512
    _cpuinfo(monkeypatch, "fpu sse avx2 avx512f avx512bw")
    assert not loop.bf16_autocast_supported(torch.device("cpu"))
    _cpuinfo(monkeypatch, "fpu sse avx2 avx512f avx512_bf16")
    assert loop.bf16_autocast_supported(torch.device("cpu"))
    _cpuinfo(monkeypatch, "fpu amx_bf16 amx_tile")
    assert loop.bf16_autocast_supported(torch.device("cpu"))
