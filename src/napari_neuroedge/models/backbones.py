"""Torchvision ResNet backbones modified as in the seed paper for dense boundary detection.

Changes to a stock torchvision ResNet (v1.5 layout: the stride sits on a Bottleneck's ``conv2``):

* ``conv1`` has stride 1 instead of 2, so the stem features stay at full resolution;
* the 3x3 max-pool (stride 2) is kept;
* the strides of ``layer1``..``layer4`` are set to ``strides`` (CASENet ``(1, 1, 2, 2)``, DFF ``(1, 2, 2, 1)``),
  giving an output stride of ``2 * prod(strides) = 8``;
* ``conv1`` takes ``in_channels`` channels (1 for grey EM images).

Pretrained ImageNet weights are only ever read from the torch hub cache; nothing is downloaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

__all__ = ["ResNetBackbone", "resnet_backbone", "cached_weights_path", "pad_to_multiple", "SUPPORTED_DEPTHS"]

_BUILDERS: dict[int, tuple[Callable[..., tv_resnet.ResNet], type[torchvision.models.WeightsEnum]]] = {
    18: (tv_resnet.resnet18, tv_resnet.ResNet18_Weights),
    34: (tv_resnet.resnet34, tv_resnet.ResNet34_Weights),
    50: (tv_resnet.resnet50, tv_resnet.ResNet50_Weights),
    101: (tv_resnet.resnet101, tv_resnet.ResNet101_Weights),
    152: (tv_resnet.resnet152, tv_resnet.ResNet152_Weights),
}
SUPPORTED_DEPTHS: tuple[int, ...] = tuple(sorted(_BUILDERS))


class ResNetBackbone(nn.Module):
    """ResNet feature extractor returning the five stage outputs.

    ``forward(x)`` with ``x`` of shape (N, C_in, H, W) returns
    ``[stem, layer1, layer2, layer3, layer4]``: the stem (conv1/bn1/relu) at stride 1, then the four residual
    stages at strides ``2 * cumprod(strides)``. ``channels`` lists their channel counts and ``output_stride``
    the stride of the last one.
    """

    def __init__(self, net: tv_resnet.ResNet, strides: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.strides: tuple[int, int, int, int] = strides
        self.output_stride: int = 2 * math.prod(strides)
        self.channels: tuple[int, ...] = (self.conv1.out_channels,) + tuple(
            _out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C_in, H, W) -> five feature maps, strides 1, then 2*cumprod(strides)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = last.conv3 if isinstance(last, tv_resnet.Bottleneck) else last.conv2
    return int(conv.out_channels)


def _set_layer_stride(layer: nn.Sequential, stride: int) -> None:
    """Give a residual stage the stride ``stride`` (on its first block's strided conv and shortcut)."""
    block = layer[0]
    conv = block.conv2 if isinstance(block, tv_resnet.Bottleneck) else block.conv1
    conv.stride = (stride, stride)
    block.stride = stride
    if block.downsample is not None:
        # Keep the 1x1 projection even when the stride becomes 1: it may still change the channel count.
        block.downsample[0].stride = (stride, stride)
    elif stride != 1:
        in_ch = int(block.conv1.in_channels)
        out_ch = _out_channels(layer)
        block.downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_ch),
        )


def _weights_file_name(weights: torchvision.models.WeightsEnum) -> str:
    return os.path.basename(urlparse(weights.url).path)


def cached_weights_path(depth: int) -> str | None:
    """Path of cached ImageNet weights for ``resnet{depth}`` in ``torch.hub.get_dir()/checkpoints``, or None.

    The ``DEFAULT`` weights are preferred; any other ImageNet weights of the same architecture are accepted.
    Only looks at the file system (never downloads).
    """
    if depth not in _BUILDERS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {SUPPORTED_DEPTHS}")
    enum = _BUILDERS[depth][1]
    model_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    candidates = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    for weights in candidates:
        path = os.path.join(model_dir, _weights_file_name(weights))
        if os.path.isfile(path):
            return path
    return None


def _load_pretrained(net: tv_resnet.ResNet, depth: int) -> None:
    name = f"resnet{depth}"
    path = cached_weights_path(depth)
    if path is None:
        expected = _weights_file_name(_BUILDERS[depth][1].DEFAULT)
        model_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"ImageNet weights for {name} are not available offline: {expected} was not found in {model_dir}; "
            "use pretrained=False or put the file in the torch hub cache"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # corrupt or mismatched file
        raise RuntimeError(f"could not load ImageNet weights for {name} from {path}: {exc}") from exc


def resnet_backbone(
    depth: int,
    strides: tuple[int, int, int, int],
    in_channels: int = 1,
    pretrained: bool = False,
) -> ResNetBackbone:
    """A torchvision ResNet-``depth`` turned into a 5-stage feature extractor of output stride ``2*prod(strides)``.

    ``in_channels != 3`` replaces ``conv1`` by an ``in_channels``-channel 7x7 conv; with ``pretrained`` it is
    initialised from the RGB filters: for 1 channel their sum over RGB, otherwise their RGB mean replicated and
    scaled by ``3 / in_channels`` (so a grey image replicated over the channels gives the pretrained response).
    ``pretrained=True`` reads the weights from the torch hub cache only and raises RuntimeError if absent.
    """
    if depth not in _BUILDERS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {SUPPORTED_DEPTHS}")
    st = tuple(int(s) for s in strides)
    if len(st) != 4 or any(s < 1 for s in st):
        raise ValueError(f"strides must be 4 positive integers, got {strides}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")

    builder = _BUILDERS[depth][0]
    net = builder(weights=None)
    if pretrained:
        _load_pretrained(net, depth)  # raises before any architecture change if weights are missing

    old = net.conv1
    if in_channels != 3:
        new = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=1, padding=3, bias=False)
        if pretrained:
            with torch.no_grad():
                rgb = old.weight  # (64, 3, 7, 7)
                if in_channels == 1:
                    new.weight.copy_(rgb.sum(dim=1, keepdim=True))
                else:
                    mean = rgb.mean(dim=1, keepdim=True) * (3.0 / in_channels)
                    new.weight.copy_(mean.expand(-1, in_channels, -1, -1))
        net.conv1 = new
    else:
        old.stride = (1, 1)

    for layer, stride in zip((net.layer1, net.layer2, net.layer3, net.layer4), st):
        _set_layer_stride(layer, stride)
    return ResNetBackbone(net, (st[0], st[1], st[2], st[3]))



def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) at the bottom/right so H and W are multiples of ``multiple``; also return (H, W).

    Reflection padding is used (replication when the image is too small to reflect); crop the network output
    back with ``out[..., :H, :W]``.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
