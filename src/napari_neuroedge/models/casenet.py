"""CASENet (Yu et al. 2017) for binary boundaries, as modified by the seed paper.

A ResNet backbone of output stride 8 (conv1 stride 1, max-pool kept, stage strides ``(1, 1, 2, 2)``) gives five
feature maps; each gets a 1x1 conv to one channel (a "side" logit map), which is upsampled to the input size
with parameter-free bilinear interpolation (we use bilinear rather than CASENet's learned transposed convs: it
works for any size and has nothing to learn). The shared concatenation fusion is a 1x1 conv over the five
stacked side maps. Deep supervision applies to the four bottom sides only: the seed puts no loss on the top
(stage-5) side output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNetBackbone, pad_to_multiple, resnet_backbone

__all__ = ["CASENet", "EdgeNetBase"]


class EdgeNetBase(nn.Module):
    """Shared plumbing of the ResNet edge detectors: padding to ``multiple`` and parameter groups.

    Subclasses set ``self.backbone`` and implement ``_forward_padded`` on inputs whose H and W are
    multiples of ``multiple``.
    """

    multiple: int = 8
    backbone: ResNetBackbone

    def _forward_padded(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        raise NotImplementedError

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """(N, C_in, H, W) -> {"fused": (N, 1, H, W) logits, "sides": 4 x (N, 1, H, W) side logits}.

        "sides" are the deep-supervised side outputs of stages 1-4 (the top stage-5 side is left out: no loss on
        it). Any H, W work: the input is padded at the bottom/right to a multiple of ``multiple`` (reflection)
        and every output is cropped back to (H, W).
        """
        xp, (h, w) = pad_to_multiple(x, self.multiple)
        out = self._forward_padded(xp)
        if xp.shape[-2:] == x.shape[-2:]:
            return out
        fused = out["fused"]
        sides = out["sides"]
        assert isinstance(fused, torch.Tensor) and isinstance(sides, list)
        return {"fused": fused[..., :h, :w], "sides": [s[..., :h, :w] for s in sides]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> fused boundary logits (N, 1, H, W) at input resolution (any H, W; see forward_train)."""
        fused = self.forward_train(x)["fused"]
        assert isinstance(fused, torch.Tensor)
        return fused

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": ResNet parameters, "head": everything else}; every parameter appears exactly once."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if id(p) not in ids]
        return {"backbone": backbone, "head": head}


def _upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size``; the identity where the size already matches.

    ``size`` may be a traced ``x.shape[-2:]``: taken without ``int()``, a ``torch.jit.trace`` of the model then
    follows the input size instead of freezing the example's (the bioimage.io TorchScript weights need that).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class CASENet(EdgeNetBase):
    """Binary-boundary CASENet on a ResNet-``depth`` (strides (1, 1, 2, 2), output stride 8).

    forward: (N, in_channels, H, W) -> fused logits (N, 1, H, W). The fusion conv starts as the mean of the five
    side maps (weights 1/5, bias 0).
    """

    strides: tuple[int, int, int, int] = (1, 1, 2, 2)

    def __init__(self, depth: int = 50, pretrained: bool = False, in_channels: int = 1) -> None:
        super().__init__()
        self.backbone = resnet_backbone(depth, self.strides, in_channels=in_channels, pretrained=pretrained)
        assert self.backbone.output_stride == self.multiple
        self.side_convs = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1) for c in self.backbone.channels)
        self.fuse = nn.Conv2d(len(self.side_convs), 1, kernel_size=1)
        with torch.no_grad():
            self.fuse.weight.fill_(1.0 / len(self.side_convs))
            self.fuse.bias.zero_()

    def _forward_padded(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]  # no int(): traceable for any input size
        feats = self.backbone(x)
        # 1x1 conv before upsampling: both are linear, so this equals conv-after-upsample at a fraction of the cost.
        sides = [_upsample(conv(f), size) for conv, f in zip(self.side_convs, feats)]
        fused = self.fuse(torch.cat(sides, dim=1))
        return {"fused": fused, "sides": sides[:-1]}
