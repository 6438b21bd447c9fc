"""Tests for the ResNet edge detectors (CASENet, DFF) and their backbone."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from napari_neuroedge.config import AugmentConfig, FinetuneOptions, LossConfig, NormConfig, TrainConfig
from napari_neuroedge.inference.predict import TorchPredictor
from napari_neuroedge.models.backbones import cached_weights_path, pad_to_multiple, resnet_backbone
from napari_neuroedge.models.casenet import CASENet
from napari_neuroedge.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from napari_neuroedge.models.dff import DFF
from napari_neuroedge.models.registry import build_model
from napari_neuroedge.progress import drive
from napari_neuroedge.io.sample import synthetic_em
from napari_neuroedge.training.augment import random_crop
from napari_neuroedge.training.dataset import slices_from_arrays
from napari_neuroedge.training.finetune import iter_finetune
from napari_neuroedge.training.large_image import LargeImageCrops
from napari_neuroedge.training.loop import iter_fit

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


# ---------------------------------------------------------------- the real training loop, checkpoints, fine-tuning

# the seed's recipe (issue 25): 0.5 soft-F1 + 0.5 focal + edge loss, Adam with a 10x head learning rate
SEED_RECIPE = LossConfig(f1=0.5, focal=0.5, edge=0.5)
ARCHS = [("unet", {"base": 8, "depth": 2}), ("casenet", {"depth": 18}), ("dff", {"depth": 18})]


@pytest.fixture(scope="module")
def em_slices() -> list:
    stack = synthetic_em((2, 64, 64), cell_size=20, seed=2)
    return slices_from_arrays(stack.image, stack.membrane, NormConfig(), source="synthetic")


def _tiny_config(arch: str, kwargs: dict, steps: int) -> TrainConfig:
    return TrainConfig(model=arch, model_kwargs=kwargs, lr_backbone=1e-3, lr_head=1e-2, batch=2, steps=steps,
                       val_every=10**6, precision="fp32", device="cpu", threads=1, loss=SEED_RECIPE,
                       augment=AugmentConfig(crop=48, elastic_p=0.0))


@pytest.mark.parametrize(("arch", "kwargs"), ARCHS, ids=[a for a, _ in ARCHS])
def test_each_architecture_trains_in_the_loop_and_lowers_the_loss(arch, kwargs, em_slices, tmp_path) -> None:
    result = drive(iter_fit(_tiny_config(arch, kwargs, 30), em_slices, [], tmp_path / "run"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result.steps == 30 and len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    # the edge detectors log the seed's three terms, the edge loss included
    assert set(json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["terms"]) >= {
        "f1", "focal", "edge"}


@pytest.mark.parametrize(("arch", "kwargs"), ARCHS[1:], ids=[a for a, _ in ARCHS[1:]])
def test_checkpoint_round_trips_and_predicts_identically(arch, kwargs, tmp_path) -> None:
    model = build_model(arch, **kwargs).eval()
    with torch.no_grad():  # move the batch-norm statistics off their defaults, so the round trip has to carry them
        model.train()(torch.randn(2, 1, 40, 40))
    model.eval()
    ckpt = make_checkpoint(model, arch, kwargs, NormConfig(), context=64)
    ckpt.threshold, ckpt.seed_threshold = 0.45, 0.25
    path = save_checkpoint(ckpt, tmp_path / f"{arch}.pt")
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.arch_kwargs, loaded.context) == (arch, kwargs, 64)
    assert (loaded.threshold, loaded.seed_threshold) == (0.45, 0.25)
    again = loaded.build()
    x = torch.randn(1, 1, 37, 51)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # the predictor (batch norms folded, channels_last) gives the same probabilities as the plain model
    image = np.random.default_rng(1).normal(size=(1, 1, 64, 64)).astype(np.float32)
    prob = TorchPredictor(again, "cpu", precision="fp32")(image)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(image))).numpy()
    np.testing.assert_allclose(prob, ref, atol=1e-4)
    # fp16-stored weights (how the bundled edge detectors ship) load into the fp32 model and predict the same
    half = dataclasses.replace(loaded, state_dict={k: v.half() if v.is_floating_point() else v
                                                   for k, v in loaded.state_dict.items()})
    with torch.no_grad():
        np.testing.assert_allclose(torch.sigmoid(half.build()(x)).numpy(), torch.sigmoid(model(x)).numpy(),
                                   atol=2e-2)


@pytest.mark.parametrize("arch", ["casenet", "dff"])
def test_finetune_service_accepts_an_edge_detector_as_parent(arch, em_slices, tmp_path) -> None:
    torch.manual_seed(0)
    parent = make_checkpoint(build_model(arch, depth=18), arch, {"depth": 18}, NormConfig(), context=64)
    parent.provenance["name"] = f"{arch}-parent"
    opts = FinetuneOptions(time_limit_s=0, steps=4, batch=2, crop=48, val_every=2, device="cpu", threads=1,
                           precision="fp32")
    outcome = drive(iter_finetune(parent, em_slices, tmp_path / "run", tmp_path / "ft.pt", options=opts))
    assert outcome.steps == 4 and outcome.validated and outcome.path == tmp_path / "ft.pt"
    child = load_checkpoint(outcome.path)
    assert child.arch == arch and child.arch_kwargs == {"depth": 18} and child.context == 64
    assert child.provenance["parent"] == f"{arch}-parent" and child.optimizer is None
    assert child.build()(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


# ---------------------------------------------------------------- the seed's big-image training (deliverable 4)


class _Lazy:
    """An array-like of ``shape`` that holds no data: reads return zeros of the window's shape."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape, self.dtype, self.ndim = shape, np.dtype(np.uint8), len(shape)

    def __getitem__(self, key):
        return np.zeros(np.empty(self.shape, dtype=[])[key].shape, np.uint8)


class _Extreme:
    """A stand-in for np.random.Generator whose ``integers`` always returns its lowest or highest value."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def integers(self, low: int, high: int | None = None) -> int:
        lo, hi = (0, low) if high is None else (low, high)
        return hi - 1 if self.high else lo


def test_big_image_training_reaches_every_pixel_and_centres_every_tile_corner() -> None:
    # a contest-size slice (9958 x 9959), cut as the seed does: 512 px tiles overlapping by 128, then tiles centred
    # on every interior corner where four grid tiles meet; training draws a 256 px crop inside a window
    H, W, tile, overlap, crop = 9958, 9959, 512, 128, 256
    crops = LargeImageCrops(_Lazy((H, W)), _Lazy((H, W)), tile=tile, overlap=overlap)
    windows = [(y, x, h, w) for _, y, x, h, w in crops.windows]
    grid_y = list(range(0, H - tile + 1, tile - overlap)) + [H - tile]
    grid_x = list(range(0, W - tile + 1, tile - overlap)) + [W - tile]
    n_grid = len(grid_y) * len(grid_x)
    assert windows[:n_grid] == [(y, x, tile, tile) for y in grid_y for x in grid_x]
    assert len(windows) == n_grid + (len(grid_y) - 1) * (len(grid_x) - 1)
    assert all(h == w == tile and 0 <= y <= H - tile and 0 <= x <= W - tile for y, x, h, w in windows)

    # every pixel lies in some window (2D coverage of the whole slice)
    covered = np.zeros((H, W), bool)
    for y, x, h, w in windows:
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    del covered

    # every interior grid corner (the middle of the overlap bands where four tiles meet) is the centre of a
    # window, so it is seen with tile // 2 px of context on every side, never at a window's edge
    centres = {(y + tile // 2, x + tile // 2) for y, x, *_ in windows}
    for a, b in zip(grid_y[:-1], grid_y[1:]):
        for c, d in zip(grid_x[:-1], grid_x[1:]):
            point = ((a + b + tile) // 2, (c + d + tile) // 2)
            assert point in centres, point

    # within a window the random crop reaches both extremes, hence every offset in between: so every pixel of
    # a window (and of the slice) can be the content of a training crop, the four image corners included
    sample = {"image": np.arange(tile * tile, dtype=np.float32).reshape(tile, tile)}
    first = random_crop(sample, crop, _Extreme(high=False))["image"]
    last = random_crop(sample, crop, _Extreme(high=True))["image"]
    assert first[0, 0] == sample["image"][0, 0] and last[-1, -1] == sample["image"][-1, -1]
    corner_windows = {(0, 0), (0, W - tile), (H - tile, 0), (H - tile, W - tile)}
    assert corner_windows <= {(y, x) for y, x, *_ in windows}
    # the lazy crops read only their window: a corner window comes back at full size with its metadata
    sl = crops.crop((None, H - tile, W - tile, tile, tile))
    assert sl.image.shape == (tile, tile) and sl.meta["window"] == [H - tile, W - tile, tile, tile]


# ---------------------------------------------------------------- bioimage.io packages


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["casenet", "dff"])
def test_edge_detector_packages_for_bioimageio_and_imports_back(arch, tmp_path) -> None:
    pytest.importorskip("bioimageio.core")
    from bioimageio.spec import load_model_description

    from napari_neuroedge.models.bioimageio.export import package_model
    from napari_neuroedge.models.bioimageio.load import load_package

    model = build_model(arch, depth=18).eval()
    ckpt = make_checkpoint(model, arch, {"depth": 18}, NormConfig(), context=64,
                           provenance={"name": f"tiny-{arch}", "data": "../shared/data/isbi2012"})
    ckpt.threshold = 0.45
    zip_path = package_model(save_checkpoint(ckpt, tmp_path / f"{arch}.pt"), tmp_path / f"{arch}.zip")
    descr = load_model_description(str(zip_path), perform_io_checks=True)
    assert {str(c.doi) for c in descr.cite} >= {"10.48550/arXiv.1705.09759"}
    assert arch in descr.tags and descr.inputs[0].axes[2].size.step == 8
    net, meta = load_package(zip_path)
    assert meta["threshold"] == 0.45 and meta["name"] == f"tiny-{arch}"
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 48, 72), dtype=np.float32))
    with zipfile.ZipFile(zip_path) as zf:
        zf.extract("weights_torchscript.pt", tmp_path)
    traced = torch.jit.load(str(tmp_path / "weights_torchscript.pt"), map_location="cpu")
    with torch.no_grad():  # both weight formats (the TorchScript traced at 32^2) follow any size
        expected = torch.sigmoid(model(x)).numpy()
        np.testing.assert_allclose(net(x).numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(traced(x).numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------- the bundled edge detectors (issue 25)

# boundary F1 (2 px) / Rand error floors on ISBI 2012 slices 20-24 with 6-way TTA, a little below the figures in
# each model card (measured on these fp16 files), so CPU-to-CPU rounding cannot fail them but a lost threshold,
# broken weights or a broken fusion does
# (cards: CASENet F1 0.9273, Rand error 0.102; DFF F1 0.9353, Rand error 0.065)
BUNDLED_FLOORS = {"casenet-r18": ("casenet", (0.922, 0.125)), "dff-r18": ("dff", (0.930, 0.080))}


@pytest.mark.parametrize("name", sorted(BUNDLED_FLOORS))
def test_bundled_edge_detector_is_listed_and_a_finetune_parent(name) -> None:
    from napari_neuroedge.models.registry import WEIGHTS_DIR, bundled_models

    assert name in bundled_models() and (WEIGHTS_DIR / f"{name}.md").is_file()
    ckpt = load_checkpoint(name)
    arch, _ = BUNDLED_FLOORS[name]
    assert ckpt.arch == arch and ckpt.arch_kwargs == {"depth": 18} and ckpt.optimizer is None
    assert 0 < ckpt.threshold < 1 and ckpt.context > 0
    assert {v.dtype for v in ckpt.state_dict.values() if v.is_floating_point()} == {torch.float16}  # small files
    assert ckpt.train_config["loss"]["edge"] > 0  # a fine-tune inherits the seed's loss from it
    from napari_neuroedge.training.finetune import finetune_config

    cfg = finetune_config(ckpt, FinetuneOptions(), has_replay=False)
    assert (cfg.model, cfg.model_kwargs, cfg.loss.edge) == (arch, {"depth": 18}, ckpt.train_config["loss"]["edge"])


@pytest.mark.isbi
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUNDLED_FLOORS))
def test_bundled_edge_detector_on_isbi_validation_slices(name, isbi_dir) -> None:
    import tifffile

    from napari_neuroedge.config import TTAConfig
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.inference.predict import predict_array
    from napari_neuroedge.metrics import evaluate
    from napari_neuroedge.models.checkpoint import load_model

    model, ckpt = load_model(name)
    vol = tifffile.imread(isbi_dir / "train-volume.tif")[20:25]
    gt = (tifffile.imread(isbi_dir / "train-labels.tif")[20:25] == 0).astype(np.uint8)
    prob = predict_array(vol, TorchPredictor(model, "cpu", tta=TTAConfig(n=6)), norm=ckpt.norm)
    res = evaluate(prob, gt, instances_fn=lambda p: instances_from_probability(p, ckpt.seed_threshold),
                   threshold=ckpt.threshold)
    print(name, {k: round(v, 4) for k, v in res.items()})
    f1_floor, rand_ceiling = BUNDLED_FLOORS[name][1]
    assert res["boundary_f1"] > f1_floor
    assert res["rand_error"] < rand_ceiling
