"""Batch-norm folding for inference: same outputs, fewer layers, the caller's model untouched."""

from __future__ import annotations

import numpy as np
import torch

from napari_neuroedge.inference.fusion import count_batchnorms, fold_batchnorm
from napari_neuroedge.inference.predict import TorchPredictor
from napari_neuroedge.models.unet import UNet


def _trained_like_unet() -> UNet:
    """A small U-Net whose batch norms hold non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    model = UNet(base=4, depth=2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 32, 32) * 3 + 1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_folded_model_gives_the_same_logits_without_batch_norms() -> None:
    model = _trained_like_unet()
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) == 10 and count_batchnorms(folded) == 0
    x = torch.randn(3, 1, 48, 64)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert ref.abs().max() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert folded.multiple == model.multiple


def test_predictor_folds_a_copy_and_leaves_the_training_model_alone() -> None:
    model = _trained_like_unet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pred = TorchPredictor(model, "cpu", precision="fp32")
    assert count_batchnorms(pred.model) == 0 and count_batchnorms(model) == 10
    assert model.training  # validation during training must not switch the live model to eval
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    unfolded = TorchPredictor(_trained_like_unet(), "cpu", precision="fp32", fold_bn=False)
    np.testing.assert_allclose(pred(x), unfolded(x), atol=1e-5)
