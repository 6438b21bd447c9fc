"""Export a checkpoint as a bioimage.io model package (model spec 0.5, built with ``bioimageio.spec``).

The package holds: the architecture source (our U-Net plus ``BoundaryUNet``, which returns the sigmoid
probability; for CASENet / DFF their ResNet backbone, model and ``BoundaryCASENet`` / ``BoundaryDFF``, needing
torch and torchvision), ``pytorch_state_dict`` and TorchScript weights, the per-slice percentile normalisation as
``scale_range`` preprocessing, a test input (a real EM crop, raw intensities) with our prediction of it as the
test output, a cover image, authors, citations, the training data's terms and the provenance (parent model,
training data, commands) under ``config.neuroedge``. TTA and the membrane threshold are outside the spec: the
package documentation states ours, and ``config.neuroedge`` stores the threshold so our importer uses it.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...io.atomic import atomic_path
from ...inference.tiling import DEFAULT_CONTEXT
from ..checkpoint import Checkpoint, load_checkpoint

SAMPLE = Path(__file__).parents[2] / "data" / "sample_em.tif"
ARCH_CALLABLE = "BoundaryUNet"
INPUT_ID, OUTPUT_ID = "raw", "boundary"

_ARCH_SUFFIX = '''

class BoundaryUNet(UNet):
    """The U-Net returning boundary probabilities (sigmoid of the logits): (N, 1, H, W) -> (N, 1, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))
'''

#: data terms and citations for weights trained on the datasets this project knows (matched in provenance paths)
DATASETS: dict[str, dict[str, Any]] = {
    "isbi2012": {
        "name": "ISBI 2012 EM segmentation challenge (ssTEM, Drosophila first-instar larva VNC, 4 x 4 x 50 nm)",
        "terms": "Free to use for generating or testing non-commercial segmentation software; any publication "
                 "or model card built on it cites TrakEM2 and Cardona et al. 2010. Weights trained on it inherit "
                 "these terms.",
        "cite": [("Cardona et al. 2010, An integrated micro- and macroarchitectural analysis of the Drosophila "
                  "brain by computer-assisted serial section electron microscopy, PLoS Biol 8(10):e1000502",
                  "10.1371/journal.pbio.1000502"),
                 ("Arganda-Carreras et al. 2015, Crowdsourcing the creation of image segmentation algorithms for "
                  "connectomics, Front. Neuroanat. 9:142", "10.3389/fnana.2015.00142")],
        "license": "CC-BY-NC-4.0",
    },
    "vnc": {
        "name": "Segmented anisotropic ssTEM dataset of neural tissue (Drosophila third-instar larva VNC)",
        "terms": "Creative Commons Attribution-NonCommercial-ShareAlike 3.0 Unported; free to use for generating "
                 "or testing non-commercial image segmentation software. Weights fine-tuned on it inherit these "
                 "terms.",
        "cite": [("Gerhard, Funke, Martel, Cardona, Fetter 2013, Segmented anisotropic ssTEM dataset of neural "
                  "tissue, figshare", "10.6084/m9.figshare.856713")],
        "license": "CC-BY-NC-SA-3.0",
    },
}
UNET_CITE = ("Ronneberger, Fischer, Brox 2015, U-Net: Convolutional Networks for Biomedical Image Segmentation, "
             "MICCAI", "10.1007/978-3-319-24574-4_28")
_CASENET_CITE = ("Yu, Feng, Liu, Ramalingam 2017, CASENet: Deep Category-Aware Semantic Edge Detection, CVPR",
                 "10.48550/arXiv.1705.09759")
_DFF_CITE = ("Hu, Chen, Li, Feng 2019, Dynamic Feature Fusion for Semantic Edge Detection, IJCAI",
             "10.48550/arXiv.1902.09104")
#: architecture -> (modules of ``models`` whose source makes architecture.py, in order; its base class; citations)
_ARCHITECTURES: dict[str, tuple[tuple[str, ...], str, list[tuple[str, str]]]] = {
    "unet": (("unet",), "UNet", [UNET_CITE]),
    "casenet": (("backbones", "casenet"), "CASENet", [_CASENET_CITE]),
    "dff": (("backbones", "casenet", "dff"), "DFF", [_CASENET_CITE, _DFF_CITE]),
}


class PackageError(ValueError):
    """The model cannot be expressed as a bioimage.io package; the message says why."""


def _walk(prov: Any, key: str) -> list[str]:
    """Every string value under ``key`` anywhere in a nested provenance dict/list."""
    found: list[str] = []
    if isinstance(prov, dict):
        for k, v in prov.items():
            if k == key and isinstance(v, str):
                found.append(v)
            else:
                found += _walk(v, key)
    elif isinstance(prov, list):
        for v in prov:
            found += _walk(v, key)
    return found


def training_datasets(ckpt: Checkpoint) -> tuple[list[str], list[str]]:
    """(training data paths named in the provenance, keys of :data:`DATASETS` they match)."""
    paths = sorted(set(_walk(ckpt.provenance, "data")))
    known = [k for k in DATASETS if any(k in p.lower() for p in paths)]
    return paths, known


def arch_callable(arch: str = "unet") -> str:
    """The package's model class for ``arch``: ``BoundaryUNet``, ``BoundaryCASENet`` or ``BoundaryDFF``."""
    return ARCH_CALLABLE if arch == "unet" else f"Boundary{_ARCHITECTURES[arch][1]}"


def architecture_source(arch: str = "unet") -> str:
    """Self-contained Python source of the ``arch`` model and :func:`arch_callable` (imports only torch; CASENet
    and DFF also torchvision): the model modules' own source, their imports of each other left out."""
    import importlib
    import re

    if arch == "unet":
        from .. import unet

        return inspect.getsource(unet) + _ARCH_SUFFIX
    modules, base, _ = _ARCHITECTURES[arch]
    parts = [inspect.getsource(importlib.import_module(f"..{m}", __package__)) for m in modules]
    body = re.sub(r"^(from __future__ import annotations|from \.\w+ import [^(\n]*)\n", "", "\n\n".join(parts),
                  flags=re.M)
    suffix = _ARCH_SUFFIX.replace("BoundaryUNet(UNet)", f"{arch_callable(arch)}({base})").replace("U-Net", base)
    return "from __future__ import annotations\n" + body + suffix


def _probability_model(ckpt: Checkpoint) -> Any:
    namespace: dict[str, Any] = {"__name__": "neuroedge_bioimageio_arch"}
    exec(compile(architecture_source(ckpt.arch), "<architecture>", "exec"), namespace)  # noqa: S102 - our own
    model = namespace[arch_callable(ckpt.arch)](**ckpt.arch_kwargs)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def test_slice(size: int = 256) -> np.ndarray:
    """A real EM crop, (size, size) uint8: the bundled sample's first slice (top-left corner)."""
    import tifffile

    return np.asarray(tifffile.imread(SAMPLE)[0, :size, :size])


def _documentation(ckpt: Checkpoint, name: str, paths: list[str], known: list[str]) -> str:
    prov = json.dumps(ckpt.provenance, indent=2, default=str)
    parents = sorted(set(_walk(ckpt.provenance, "finetuned_from")))
    terms = "\n".join(f"- **{DATASETS[k]['name']}**: {DATASETS[k]['terms']}" for k in known) or \
        "- no known public dataset in the provenance: the terms of the user's own training data apply."
    base = _ARCHITECTURES[ckpt.arch][1].replace("UNet", "U-Net")
    return f"""# {name}: napari-neuroedge boundary {base}

Predicts the probability that a pixel of a 2D EM slice (one grey channel) is a neuron membrane.
Architecture: {base} {ckpt.arch_kwargs} (`{arch_callable(ckpt.arch)}`, which applies the sigmoid); input sizes are
multiples of {_multiple(ckpt)} px. Preprocessing: each slice is scaled by its own
{ckpt.norm.low:g}th / {ckpt.norm.high:g}th percentiles (`scale_range`).

## Not expressible in the model spec
- **Test-time augmentation**: napari-neuroedge averages the probabilities of 6 (`--tta 6`: identity, flips and
  rotations) or all 8 dihedral transforms, each inverted exactly; the spec runs the model once (no TTA). The
  test output of this package is our prediction *without* TTA.
- **Membrane threshold**: membranes are `probability >= {ckpt.threshold:g}` (this model's calibrated threshold,
  also stored in `config.neuroedge.threshold`); neuron instances come from a watershed of the probability seeded
  below {ckpt.seed_threshold:g}.
- **Tiling**: we predict slices up to 1024 px in one pass and larger ones in the fewest tiles of at most 1024
  px, overlapping by this model's measured receptive context ({ckpt.context or DEFAULT_CONTEXT} px per side),
  each pixel taken from a tile that sees its whole context.

## Validation
The test output is napari-neuroedge's own prediction (no TTA, one tile) of the test input, a 256 x 256 crop of
the bundled sample EM slice; `bioimageio test` reproduces it from the test input with both weight formats.

Run it in napari-neuroedge with `neuroedge predict IMAGE -o OUT.tif --model THIS_PACKAGE.zip --tta 6`.

## Training data and terms
{terms}

Training data named in the provenance: {", ".join(paths) or "none recorded"}.
Fine-tuned from: {", ".join(parents) or "none (trained from scratch)"}.

## Provenance (napari-neuroedge checkpoint)
```json
{prov}
```
"""


def _multiple(ckpt: Checkpoint) -> int:
    """Input sizes of the package are multiples of this (U-Net: 2^depth; CASENet / DFF: their output stride 8)."""
    return 2 ** int(ckpt.arch_kwargs.get("depth", 4)) if ckpt.arch == "unet" else 8


def _write_cover(path: Path, raw: np.ndarray, prob: np.ndarray, threshold: float) -> None:
    from ...io.overlay import write_overlay

    write_overlay(path, [(raw, prob, "test input")], threshold, "napari-neuroedge boundary prediction")


def package_model(model: str | Path, output: str | Path, name: str | None = None) -> Path:
    """Write the bioimage.io package (zip) of ``model`` (bundled name, fine-tuned name or checkpoint path).

    Raises :class:`PackageError` for models the spec export does not cover (non-U-Net, non-percentile norm),
    :class:`~napari_neuroedge.io.atomic.OutputExistsError` if ``output`` exists. Returns ``output``.
    """
    import pydantic
    import torch

    if tuple(int(v) for v in pydantic.VERSION.split(".")[:2]) >= (2, 14):
        raise PackageError(f"bioimageio.spec cannot write packages under pydantic {pydantic.VERSION}; install "
                           "pydantic<2.14 (pip install 'napari-neuroedge[bioimageio]' pins it)")
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as s

    from ...inference.normalize import normalize_slice

    output = Path(output)
    ckpt = load_checkpoint(model)
    if ckpt.arch not in _ARCHITECTURES:
        raise PackageError(f"only U-Net, CASENet and DFF models can be packaged for bioimage.io (this one is "
                           f"{ckpt.arch!r})")
    if ckpt.norm.mode != "percentile":
        raise PackageError(f"normalisation {ckpt.norm.mode!r} has no exact bioimage.io preprocessing; only "
                           "'percentile' models can be packaged")
    name = name or str(ckpt.provenance.get("name") or Path(str(model)).stem)
    multiple = _multiple(ckpt)
    paths, known = training_datasets(ckpt)
    net = _probability_model(ckpt)
    raw = test_slice()
    with torch.inference_mode():
        x = torch.from_numpy(normalize_slice(raw, ckpt.norm))[None, None]
        prob = net(x).numpy().astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp_dir, atomic_path(output, suffix=".zip") as tmp_zip:
        tmp = Path(tmp_dir)
        np.save(tmp / "test_input.npy", raw.astype(np.float32)[None, None])
        np.save(tmp / "test_output.npy", prob)
        (tmp / "architecture.py").write_text(architecture_source(ckpt.arch))
        torch.save(net.state_dict(), tmp / "weights.pt")
        example = torch.zeros(1, 1, 4 * multiple, 4 * multiple)
        with warnings.catch_warnings():  # tracing is exact here: valid inputs are multiples, so never padded
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(net, example), tmp / "weights_torchscript.pt")
        _write_cover(tmp / "cover.png", raw, prob[0, 0], ckpt.threshold)
        (tmp / "README.md").write_text(_documentation(ckpt, name, paths, known))
        licenses = [DATASETS[k]["license"] for k in known]
        cites = _ARCHITECTURES[ckpt.arch][2] + [c for k in known for c in DATASETS[k]["cite"]]
        torch_version = s.Version(torch.__version__.split("+")[0])
        with ValidationContext(root=tmp, perform_io_checks=True):
            descr = s.ModelDescr(
                name=name,
                description="Neuron-membrane (boundary) probability of 2D EM slices, from napari-neuroedge",
                authors=[s.Author(name="napari-neuroedge developers")],
                cite=[s.CiteEntry(text=t, doi=s.Doi(d)) for t, d in cites],
                license=s.LicenseId("CC-BY-NC-SA-3.0" if "CC-BY-NC-SA-3.0" in licenses else
                                    licenses[0] if licenses else "BSD-3-Clause"),
                documentation=s.FileDescr(source=tmp / "README.md"),
                covers=[s.FileDescr(source=tmp / "cover.png")],
                tags=["electron-microscopy", "membrane-segmentation", "boundary-detection", "neurons", "2d",
                      ckpt.arch, "pytorch", "napari-neuroedge"],
                inputs=[s.InputTensorDescr(
                    id=s.TensorId(INPUT_ID),
                    description="EM slice, one grey channel, raw intensities (uint8, uint16 or float)",
                    axes=[s.BatchAxis(), s.ChannelAxis(channel_names=[s.Identifier("em")]),
                          s.SpaceInputAxis(id=s.AxisId("y"), size=s.ParameterizedSize(min=multiple, step=multiple)),
                          s.SpaceInputAxis(id=s.AxisId("x"), size=s.ParameterizedSize(min=multiple, step=multiple))],
                    test_tensor=s.FileDescr(source=tmp / "test_input.npy"),
                    preprocessing=[s.ScaleRangeDescr(kwargs=s.ScaleRangeKwargs(
                        axes=[s.AxisId("y"), s.AxisId("x")], min_percentile=ckpt.norm.low,
                        max_percentile=ckpt.norm.high))])],
                outputs=[s.OutputTensorDescr(
                    id=s.TensorId(OUTPUT_ID),
                    description="boundary (membrane) probability in [0, 1]",
                    axes=[s.BatchAxis(), s.ChannelAxis(channel_names=[s.Identifier("membrane")]),
                          s.SpaceOutputAxis(id=s.AxisId("y"), size=s.SizeReference(
                              tensor_id=s.TensorId(INPUT_ID), axis_id=s.AxisId("y"))),
                          s.SpaceOutputAxis(id=s.AxisId("x"), size=s.SizeReference(
                              tensor_id=s.TensorId(INPUT_ID), axis_id=s.AxisId("x")))],
                    test_tensor=s.FileDescr(source=tmp / "test_output.npy"),
                    data=s.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
                weights=s.WeightsDescr(
                    pytorch_state_dict=s.PytorchStateDictWeightsDescr(
                        source=tmp / "weights.pt", pytorch_version=torch_version,
                        architecture=s.ArchitectureFromFileDescr(
                            source=tmp / "architecture.py", callable=s.Identifier(arch_callable(ckpt.arch)),
                            kwargs=dict(ckpt.arch_kwargs))),
                    torchscript=s.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                          pytorch_version=torch_version,
                                                          parent="pytorch_state_dict")),
                config={"neuroedge": {
                    "threshold": float(ckpt.threshold), "tta": "not in the spec; napari-neuroedge --tta 1|6|8",
                    "norm": {"mode": ckpt.norm.mode, "low": ckpt.norm.low, "high": ckpt.norm.high},
                    "parent": sorted(set(_walk(ckpt.provenance, "finetuned_from"))) or None,
                    "training_data": paths, "data_terms": [DATASETS[k]["terms"] for k in known],
                    "provenance": json.loads(json.dumps(ckpt.provenance, default=str))}},
            )
        tmp_zip.unlink()
        save_bioimageio_package(descr, output_path=tmp_zip)
    return output
