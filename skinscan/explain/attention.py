"""Swin attention maps: where the model's own window attention looked, as one image-space map per image.

Method (attention received, last stage): for every block of the last Swin stage we capture the softmax
attention probabilities of each window, shape [B*windows, heads, N, N] (N = window area), average over heads
and over query tokens, which gives how much attention each token *received* inside its window. The windows
are stitched back onto the token grid (undoing padding and the cyclic shift of shifted-window blocks), the
blocks are averaged, and the grid is min-max normalised and resized to the input. Where the last stage holds a
single window (Swin-T at 224 px: 7x7 tokens, window 7) this is global; with several windows it compares tokens
within each window, which is a limit of windowed attention, not of the method.

Hooks are registered for one call and removed afterwards; the attention modules' fused kernels (which do not
expose probabilities) are switched off only during that call.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from skinscan.explain.cam import _scale
from skinscan.models import is_swin


def attention_maps(model: nn.Module, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """[N, H, W] attention-received maps in [0, 1] for a timm Swin; feature resolution if `out_size` is None."""
    from timm.models.swin_transformer import window_reverse

    if not is_swin(model):
        raise ValueError(f"attention maps need a Swin model, got {type(model).__name__}")
    blocks = list(model.layers[-1].blocks)
    captured: list[tuple[tuple, torch.Tensor]] = []
    shapes: dict[int, tuple] = {}
    handles, fused = [], []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: shapes.__setitem__(i, tuple(a[0].shape))))
        handles.append(
            block.attn.softmax.register_forward_hook(lambda m, a, out, i=i: captured.append((i, out.detach())))
        )
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        for block, f in zip(blocks, fused):
            block.attn.fused_attn = f
    grids = []
    for i, probs in captured:
        block = blocks[i]
        B, H, W, _ = shapes[i]
        ws = block.window_size
        received = probs.mean(dim=1).mean(dim=1)  # [B*nW, N]: attention each key token received
        Hp, Wp = -(-H // ws[0]) * ws[0], -(-W // ws[1]) * ws[1]
        grid = window_reverse(received.view(-1, ws[0], ws[1], 1), ws, Hp, Wp)[:, :H, :W, 0]
        if any(block.shift_size):
            grid = torch.roll(grid, shifts=block.shift_size, dims=(1, 2))
        grids.append(grid)
    maps = _scale(torch.stack(grids).mean(0).cpu().numpy())
    return maps if out_size is None else _scale(_scale(maps, out_size))
