"""Tests for the ResNet edge detectors (CASENet, DFF) and their backbone."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision

from napari_neuroedge.models.backbones import cached_weights_path, pad_to_multiple, resnet_backbone
from napari_neuroedge.models.casenet import CASENet
from napari_neuroedge.models.dff import DFF

MODELS = [CASENet, DFF]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub dir, and any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def _no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    return tmp_path


# ---------------------------------------------------------------- backbone


@pytest.mark.parametrize(
    ("strides", "sizes"),
    [
        # conv1 stride 1 -> 64; maxpool -> 32; then the layer strides
        ((1, 1, 2, 2), [64, 32, 32, 16, 8]),
        ((1, 2, 2, 1), [64, 32, 16, 8, 8]),
    ],
)
def test_backbone_feature_sizes_output_stride_8(strides, sizes) -> None:
    bb = resnet_backbone(18, strides, in_channels=1).eval()
    with torch.no_grad():
        feats = bb(torch.zeros(1, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == sizes
    assert [f.shape[-2] for f in feats] == sizes
    assert [f.shape[1] for f in feats] == [64, 64, 128, 256, 512]
    assert list(bb.channels) == [64, 64, 128, 256, 512]
    assert bb.output_stride == 8
    assert bb.conv1.stride == (1, 1) and bb.conv1.in_channels == 1
    assert bb.maxpool.stride == 2


def test_backbone_stride_surgery_bottleneck_and_basic() -> None:
    bb50 = resnet_backbone(50, (1, 2, 2, 1))
    first = bb50.layer4[0]
    # v1.5 layout: the stride is on conv2; layer4 becomes stride 1 but keeps its 1x1 projection 1024 -> 2048
    assert first.conv2.stride == (1, 1) and first.conv1.stride == (1, 1)
    assert first.downsample is not None
    assert first.downsample[0].stride == (1, 1) and first.downsample[0].out_channels == 2048
    assert bb50.layer2[0].conv2.stride == (2, 2) and bb50.layer2[0].downsample[0].stride == (2, 2)
    assert list(bb50.channels) == [64, 256, 512, 1024, 2048]

    # BasicBlock: resnet18's layer1 has no shortcut conv; making it stride 2 must add one
    bb18 = resnet_backbone(18, (2, 1, 1, 1))
    assert bb18.layer1[0].conv1.stride == (2, 2)
    assert bb18.layer1[0].downsample is not None
    assert bb18.layer2[0].conv1.stride == (1, 1) and bb18.layer2[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        feats = bb18.eval()(torch.zeros(1, 1, 32, 32))
    assert [f.shape[-1] for f in feats] == [32, 8, 8, 8, 8]


def test_backbone_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="depth"):
        resnet_backbone(20, (1, 1, 2, 2))
    with pytest.raises(ValueError, match="strides"):
        resnet_backbone(18, (1, 2, 2))  # type: ignore[arg-type]


def test_pad_to_multiple_reflects_bottom_right() -> None:
    x = torch.arange(37 * 51, dtype=torch.float32).reshape(1, 1, 37, 51)
    xp, (h, w) = pad_to_multiple(x, 8)
    assert (h, w) == (37, 51)
    assert xp.shape == (1, 1, 40, 56)
    assert torch.equal(xp[..., :37, :51], x)
    # reflection: padded row 37 mirrors row 35, padded column 51 mirrors column 49
    assert torch.equal(xp[0, 0, 37, :51], x[0, 0, 35])
    assert torch.equal(xp[0, 0, :37, 51], x[0, 0, :, 49])
    same, _ = pad_to_multiple(torch.zeros(1, 1, 40, 56), 8)
    assert same.shape == (1, 1, 40, 56)
    tiny, _ = pad_to_multiple(torch.ones(1, 1, 3, 5), 8)  # too small to reflect: replicate
    assert tiny.shape == (1, 1, 8, 8) and torch.equal(tiny, torch.ones(1, 1, 8, 8))


# ---------------------------------------------------------------- pretrained weights


def test_pretrained_offline_raises_without_downloading(offline_hub) -> None:
    """Offline and not cached: a clear error at once, and no download is attempted (offline_hub fails on one)."""
    assert cached_weights_path(50) is None
    with pytest.raises(RuntimeError, match="ImageNet weights for resnet50 are not available offline"):
        CASENet(depth=50, pretrained=True)
    with pytest.raises(RuntimeError, match="pretrained=False or put the file in the torch hub cache"):
        resnet_backbone(18, (1, 2, 2, 1), pretrained=True)


def test_pretrained_from_hub_cache_sums_rgb_filters(offline_hub) -> None:
    ref = torchvision.models.resnet18(weights=None)
    state = ref.state_dict()
    name = os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)
    (offline_hub / "checkpoints").mkdir()
    torch.save(state, offline_hub / "checkpoints" / name)
    assert cached_weights_path(18) == str(offline_hub / "checkpoints" / name)

    grey = resnet_backbone(18, (1, 1, 2, 2), in_channels=1, pretrained=True)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    expected = state["conv1.weight"][:, 0] + state["conv1.weight"][:, 1] + state["conv1.weight"][:, 2]
    assert torch.allclose(grey.conv1.weight[:, 0], expected)
    assert torch.equal(grey.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(grey.bn1.running_mean, state["bn1.running_mean"])

    rgb = resnet_backbone(18, (1, 1, 2, 2), in_channels=3, pretrained=True)
    assert torch.equal(rgb.conv1.weight, state["conv1.weight"]) and rgb.conv1.stride == (1, 1)

    # a grey image replicated over 2 channels gives the same stem response as the 1-channel model
    two = resnet_backbone(18, (1, 1, 2, 2), in_channels=2, pretrained=True)
    img = torch.rand(1, 1, 16, 16)
    assert torch.allclose(two.conv1(img.repeat(1, 2, 1, 1)), grey.conv1(img), atol=1e-5)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 1, 40, 56), (2, 1, 37, 51)])
def test_output_shapes_equal_input(cls, shape) -> None:
    model = cls(depth=18).eval()
    assert model.multiple == 8
    with torch.no_grad():
        x = torch.randn(shape)
        y = model(x)
        out = model.forward_train(x)
    assert y.shape == (shape[0], 1, shape[2], shape[3])
    assert y.dtype == torch.float32
    assert out["fused"].shape == y.shape
    assert torch.allclose(out["fused"], y)
    assert len(out["sides"]) == 4
    assert all(s.shape == y.shape for s in out["sides"])


@pytest.mark.parametrize("cls", MODELS)
def test_non_multiple_input_is_padded_and_cropped(cls) -> None:
    model = cls(depth=18).eval()
    x = torch.randn(1, 1, 37, 51)
    with torch.no_grad():
        y = model(x)
        padded = F.pad(x, (0, 5, 0, 3), mode="reflect")
        y_ref = model(padded)[..., :37, :51]
    assert torch.allclose(y, y_ref, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS)
def test_param_groups_cover_each_parameter_once(cls) -> None:
    model = cls(depth=18)
    groups = model.param_groups()
    assert set(groups) == {"backbone", "head"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert len(groups["head"]) > 0
    # usable with the discriminative learning rates of the seed
    opt = torch.optim.SGD(
        [{"params": groups["backbone"], "lr": 0.0014}, {"params": groups["head"], "lr": 0.014}], lr=0.01
    )
    assert [g["lr"] for g in opt.param_groups] == [0.0014, 0.014]


def _side_modules(model) -> torch.nn.ModuleList:
    return model.side_convs if isinstance(model, CASENet) else model.side_norms


@pytest.mark.parametrize("cls", MODELS)
def test_top_side_not_deep_supervised(cls) -> None:
    model = cls(depth=18)
    out = model.forward_train(torch.randn(1, 1, 32, 32))
    torch.stack([s.sum() for s in out["sides"]]).sum().backward()
    sides = _side_modules(model)
    grads = [next(m.parameters()).grad for m in sides]
    # stages 1-4 receive gradient from the side losses, the top (stage-5) side receives none
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    assert grads[4] is None


def test_casenet_fusion_starts_as_mean_of_all_five_sides() -> None:
    model = CASENet(depth=18).eval()
    x = torch.randn(1, 1, 32, 40)
    with torch.no_grad():
        feats = model.backbone(x)
        top = F.interpolate(model.side_convs[4](feats[4]), size=(32, 40), mode="bilinear", align_corners=False)
        out = model.forward_train(x)
    assert torch.allclose(model.fuse.weight.flatten(), torch.full((5,), 0.2))
    expected = (sum(out["sides"]) + top) / 5.0
    assert torch.allclose(out["fused"], expected, atol=1e-5)
    # side 1 comes from the full-resolution stem: no interpolation involved
    assert torch.allclose(out["sides"][0], model.side_convs[0](feats[0]), atol=1e-6)


def test_dff_fuses_sides_with_location_adaptive_weights() -> None:
    model = DFF(depth=18).eval()
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        feats = model.backbone(x)
        w = model.fusion_weights(feats[4], (32, 40))
        top = F.interpolate(model.side_norms[4](feats[4]), size=(32, 40), mode="bilinear", align_corners=False)
        out = model.forward_train(x)
    assert w.shape == (2, 5, 32, 40)
    sides = out["sides"] + [top]
    expected = sum(w[:, k : k + 1] * sides[k] for k in range(5))
    assert torch.allclose(out["fused"], expected, atol=1e-5)
    # weights start around 1/5 and differ between locations (adaptive, not a fixed vector)
    assert abs(w.mean().item() - 0.2) < 0.05
    assert w.std(dim=(2, 3)).min() > 0


def _synthetic_membranes(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright image with dark 2-px lines (membranes) and its {0,1} target, (1, 1, size, size)."""
    target = torch.zeros(1, 1, size, size)
    for c in (10, 27, 40):
        target[..., c : c + 2] = 1.0
        target[..., c // 2 + 5 : c // 2 + 7, :] = 1.0
    image = 0.8 - 0.6 * target + 0.05 * torch.randn_like(target)
    return image, target


@pytest.mark.parametrize("cls", MODELS)
def test_adam_steps_lower_bce(cls) -> None:
    model = cls(depth=18).train()
    image, target = _synthetic_membranes()
    groups = model.param_groups()
    opt = torch.optim.Adam(
        [{"params": groups["backbone"], "lr": 1e-3}, {"params": groups["head"], "lr": 1e-2}]
    )

    def loss_fn() -> torch.Tensor:
        out = model.forward_train(image)
        logits = [out["fused"], *out["sides"]]
        return sum(F.binary_cross_entropy_with_logits(z, target) for z in logits) / len(logits)

    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_fn().item()
    assert final < 0.8 * losses[0], (losses, final)


def test_resnet50_models_full_size_output() -> None:
    x = torch.randn(1, 1, 32, 32)
    for cls in MODELS:
        model = cls().eval()  # default depth 50
        with torch.no_grad():
            feats = model.backbone(x)
            out = model.forward_train(x)
        assert feats[4].shape == (1, 2048, 4, 4)
        assert out["fused"].shape == (1, 1, 32, 32)
        assert len(out["sides"]) == 4 and all(s.shape == (1, 1, 32, 32) for s in out["sides"])
