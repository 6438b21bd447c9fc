"""2D U-Net (Ronneberger 2015) for boundary probability: 'same' padding, batch norm, 1-channel logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``base`` channels at full resolution (doubling per level).

    Input (N, in_channels, H, W) with H, W multiples of ``multiple`` = 2**depth (other sizes are reflect-padded
    internally and cropped back); output (N, 1, H, W) boundary logits.
    """

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 4, out_channels: int = 1) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError(f"depth and base must be positive, got depth={depth}, base={base}")
        self.depth = depth
        self.multiple = 2**depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([_block(in_channels, widths[0])] +
                                     [_block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(depth, 0, -1)])
        self.decoder = nn.ModuleList([_block(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)[..., :h, :w]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """"backbone" = encoder, "head" = decoder + output layer (for discriminative learning rates)."""
        backbone = list(self.encoder.parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in ids]}
