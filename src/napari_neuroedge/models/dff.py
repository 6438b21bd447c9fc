"""DFF, Dynamic Feature Fusion (Hu et al. 2019), for binary boundaries, as used by the seed paper.

A ResNet backbone of output stride 8 (conv1 stride 1, max-pool kept, stage strides ``(1, 2, 2, 1)``) gives five
feature maps. Each is "feature-normalised" (1x1 conv to one channel + BatchNorm, so the side maps of the
different stages have comparable scales) and bilinearly upsampled to the input size. An adaptive weight learner
(3x3 conv + BN + ReLU, 1x1 conv + BN + ReLU, 1x1 conv to 5 channels) on the top (stage-5) features predicts five
fusion weights per location at stride 8; they are bilinearly upsampled and the fused logits are
``sum_k w_k(x) * side_k(x)``. As in DFF the weights are not normalised (no softmax); the last conv starts near
zero with bias 1/5 so training begins from the mean of the sides. Deep supervision: the four bottom sides only
(no loss on the top side).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import resnet_backbone
from .casenet import EdgeNetBase, _upsample

__all__ = ["DFF"]


class DFF(EdgeNetBase):
    """Binary-boundary DFF on a ResNet-``depth`` (strides (1, 2, 2, 1), output stride 8).

    forward: (N, in_channels, H, W) -> fused logits (N, 1, H, W).
    """

    strides: tuple[int, int, int, int] = (1, 2, 2, 1)
    weight_channels: int = 64  # width of the adaptive weight learner

    def __init__(self, depth: int = 50, pretrained: bool = False, in_channels: int = 1) -> None:
        super().__init__()
        self.backbone = resnet_backbone(depth, self.strides, in_channels=in_channels, pretrained=pretrained)
        assert self.backbone.output_stride == self.multiple
        chans = self.backbone.channels
        n = len(chans)
        self.side_norms = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 1, kernel_size=1, bias=False), nn.BatchNorm2d(1)) for c in chans
        )
        m = self.weight_channels
        self.weight_learner = nn.Sequential(
            nn.Conv2d(chans[-1], m, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(m),
            nn.ReLU(inplace=True),
            nn.Conv2d(m, m, kernel_size=1, bias=False),
            nn.BatchNorm2d(m),
            nn.ReLU(inplace=True),
            nn.Conv2d(m, n, kernel_size=1),
        )
        last = self.weight_learner[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        with torch.no_grad():
            nn.init.normal_(last.weight, std=0.01)
            last.bias.fill_(1.0 / n)

    def fusion_weights(self, top: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Stage-5 features (N, C5, h, w) -> per-pixel fusion weights (N, 5, *size)."""
        return _upsample(self.weight_learner(top), size)

    def _forward_padded(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]  # no int(): traceable for any input size
        feats = self.backbone(x)
        sides = [_upsample(norm(f), size) for norm, f in zip(self.side_norms, feats)]
        weights = self.fusion_weights(feats[-1], size)
        fused = (weights * torch.cat(sides, dim=1)).sum(dim=1, keepdim=True)
        return {"fused": fused, "sides": sides[:-1]}
