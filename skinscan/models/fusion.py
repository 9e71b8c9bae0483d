"""Metadata fusion: age, sex and site embedded and joined to a classifier's pooled image features.

    logits = image_head(pooled) + [any metadata known] * fuse([pooled, embed(metadata)])

The image path is the timm classifier unchanged, and the metadata term is added only for rows with some metadata,
so a row without metadata gets exactly the image-only prediction (same weights, no special case at inference).
Training withholds metadata at random (`TrainConfig.metadata_withheld`) so the image head stays a classifier of
its own. The wrapper keeps timm's interface (`forward_features`, `forward_head`, `get_classifier`,
`num_features`), so class-activation maps, export wrappers and the lesion-mask head read the image path as before.
"""

from __future__ import annotations

import torch
from torch import nn

from skinscan.data.metadata import METADATA_DIM


class MetadataFusion(nn.Module):
    def __init__(self, model: nn.Module, hidden: int = 32):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.num_classes = model.num_classes
        self.embed = nn.Sequential(nn.Linear(METADATA_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.fuse = nn.Linear(model.num_features + hidden, model.num_classes)
        nn.init.zeros_(self.fuse.weight)  # starts as the image-only model; metadata earns its say in training
        nn.init.zeros_(self.fuse.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(f, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def fused_head(self, f: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map and the encoded metadata ([N, METADATA_DIM]; zeros: unknown)."""
        pooled = self.model.forward_head(f, pre_logits=True)
        logits = self.model.get_classifier()(pooled)
        meta = meta.to(pooled.dtype)
        present = (meta.abs().sum(1, keepdim=True) > 0).to(logits.dtype)
        return logits + present * self.fuse(torch.cat([pooled, self.embed(meta)], 1))

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        f = self.forward_features(x)
        return self.forward_head(f) if meta is None else self.fused_head(f, meta)
