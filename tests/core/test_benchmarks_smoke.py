"""Smoke test of the benchmark scripts: each runs with --quick in a subprocess, exits 0 and prints its ratios.

No timing is asserted here (speed and memory targets live only in the benchmark scripts); the test checks that
every script still runs against the current core API and prints every ratio line it promises, each a finite
positive number.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
RATIO = re.compile(r"^RATIO (\S+) = (\S+)", re.M)

pytestmark = pytest.mark.slow


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_quick(script: str, *extra: str, tmp: Path | None = None) -> tuple[str, dict[str, float]]:
    """Run ``script --quick``; with ``tmp``, its temporary files go there (TMPDIR)."""
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp is not None else None
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    ratios = {key: float(value) for key, value in RATIO.findall(proc.stdout)}
    for key, value in ratios.items():
        assert math.isfinite(value) and value > 0, f"{script}: ratio {key} = {value}"
    assert "## README table" in proc.stdout
    return proc.stdout, ratios


def test_parse_ratio_lines() -> None:
    """The regex the smoke tests rely on reads what _common.ratio_line prints (and nothing else)."""
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    line = _common.ratio_line("a_over_b", 1.23456, _common.target_note(1.23456, "<=", 1.1))
    assert line == "RATIO a_over_b = 1.235  (target <= 1.1: NOT met)"
    assert RATIO.findall(line + "\nratio x = 2\n") == [("a_over_b", "1.235")]
    assert _common.markdown_table(["a", "b"], [[1, 2]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


@pytest.mark.skipif(not _has("psutil"), reason="psutil (benchmark-only dependency) not installed")
def test_bench_inference_quick() -> None:
    out, ratios = run_quick("bench_inference.py")
    expected = {"ours_over_floor_96_tta1", "ours_over_floor_96_tta6", "ours_over_floor_192_tta1",
                "bf16_over_fp32_conv_throughput", "huge_over_small_peak_rss", "huge_over_small_peak_anon"}
    if _has("monai"):
        expected |= {"ours_over_monai_96_tta1", "ours_over_monai_96_tta6", "ours_over_monai_peak_rss"}
    assert expected <= set(ratios), f"missing {expected - set(ratios)}"
    assert "target < 2048 MiB" in out
    assert "ours_over_floor_huge_tta1" in ratios  # the 9958 x 9959 timing row (320 x 321 in --quick)


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "isbi2012" / "train-volume.tif").exists(),
                    reason="../shared/data/isbi2012 not found")
def test_bench_default_model_quick() -> None:
    out, ratios = run_quick("bench_default_model.py")
    assert {"default_isbi_pixel", "default_isbi_f1_2px", "default_isbi_rand"} <= set(ratios)
    assert "| default | isbi | 6 |" in out and "| default | isbi-coarse | 1 |" in out


def test_bench_training_quick() -> None:
    _, ratios = run_quick("bench_training.py", "--models", "unet,casenet-18")
    expected = {"train_mpx_per_s_casenet-18_over_unet", "step_bce_skeleton_recall_over_bce", "step_edge_over_bce",
                "step_default_recipe_over_bce", "infer_s_per_mpx_casenet-18_over_unet"}
    assert expected <= set(ratios), f"missing {expected - set(ratios)}"


@pytest.mark.skipif(not _has("segmentation_models_pytorch"), reason="segmentation-models-pytorch not installed")
def test_bench_peer_quick() -> None:
    out, ratios = run_quick("bench_peer.py", "--minutes", "0.1", "--loss", "bce=1,skeleton_recall=0.25", "--ema", "0.9")
    assert "--loss bce=1,skeleton_recall=0.25, --ema 0.9" in out
    assert "loss {'skeleton_recall': 0.25, 'bce': 1.0}" in out
    expected = {f"ours_over_peer_{m}_tta{t}" for m in ("pixel_error", "boundary_f1", "rand_error") for t in (1, 6)}
    assert expected | {"ours_over_peer_steps"} <= set(ratios), f"missing {expected - set(ratios)}"
    steps = [int(s) for s in re.findall(r"^  (\d+) steps, ", out, re.M)]
    assert len(steps) == 2 and min(steps) >= 1


@pytest.mark.skipif(not (_has("psutil") and _has("zarr")), reason="psutil / zarr (benchmark extras) not installed")
def test_bench_scale_quick() -> None:
    """Every case runs in its own process and reports memory; the Dask path (when installed) matches exactly."""
    proc = subprocess.run([sys.executable, str(BENCH / "bench_scale.py"), "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"bench_scale failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = re.findall(r"^\S+ +\S+->\S+ +(\w[\w-]*) +[\d.]+ +[\d.]+ +[\d.]+ +(\d+) +(\d+) +(\d+) ", proc.stdout, re.M)
    assert len(rows) >= 5, proc.stdout
    for _, base, peak, anon in rows:
        assert 0 < int(anon) <= int(peak) and int(base) <= int(peak)
    if _has("distributed"):
        assert "max |difference| vs single-process output: 0.00e+00" in proc.stdout


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "vnc" / "stack1-raw.tif").exists(),
                    reason="../shared/data/vnc not found")
def test_bench_correction_loop_quick(tmp_path: Path) -> None:
    out, ratios = run_quick("bench_correction_loop.py", "--shifts", "vnc-hard", "--peer", "none", tmp=tmp_path)
    assert {"finetune_wall_s_vnc-hard", "rand_after_over_before_vnc-hard"} <= set(ratios)
    assert "| vnc-hard | ours | zero-shot |" in out and "| vnc-hard | ours | fine-tuned (defaults; parent kept " in out
    # every fine-tune's run folder is gone once scored, and the work folder at the end (a grid of 30 had left 11 GB)
    assert not list(tmp_path.glob("neuroedge-loop-*"))


@pytest.mark.skipif(not _has("segmentation_models_pytorch"), reason="segmentation-models-pytorch not installed")
def test_bench_correction_loop_peer_quick() -> None:
    """The peer (smp Unet(resnet18), pretrained for seconds on synthetic data in --quick) is fine-tuned by the same
    service with the same TrainConfig but the model, and compared on the same slices; no data needed."""
    out, ratios = run_quick("bench_correction_loop.py", "--shifts", "synthetic")
    expected = {"finetune_wall_s_synthetic", "peer_finetune_wall_s_synthetic", "peer_rand_after_over_before_synthetic",
                "ours_over_peer_pixel_after_synthetic", "ours_over_peer_f1_exact_after_synthetic",
                "ours_over_peer_rand_after_synthetic"}
    assert expected <= set(ratios), f"missing {expected - set(ratios)}"
    differs = re.search(r"fine-tune TrainConfig differs from ours in: (.*)$", out, re.M).group(1)
    assert [d.split(":")[0] for d in differs.split("; ")] == ["model", "model_kwargs"]  # nothing else differs
    assert "pretrained now on synthetic" in out
    steps = [int(n) for n in re.findall(r" pair \[\d+, \d+\]: (\d+) steps in", out)]
    assert len(steps) == 6 and min(steps) >= 1  # three pairs each, ours and the peer
    assert "| synthetic | smp Unet(resnet18) | fine-tuned (defaults; parent kept " in out
    assert "| synthetic | ours | zero-shot |" in out


def test_bench_edge_models_quick(tmp_path) -> None:
    out, ratios = run_quick("bench_edge_models.py", "--save", str(tmp_path))
    expected = {f"{m}_over_unet_{k}" for m in ("casenet-18", "dff-18")
                for k in ("f1_2px_synthetic", "rand_synthetic", "steps")}
    assert expected <= set(ratios), f"missing {expected - set(ratios)}"
    assert "| casenet-18 | synthetic | 6 |" in out and "| dff-18 | synthetic | 6 |" in out
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["casenet-18.pt", "dff-18.pt", "unet.pt"]


def test_correction_loop_grid_of_several_fields_runs_every_combination() -> None:
    """--grid repeated: every combination of the fields, typed like their defaults, applied to the options."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_correction_loop as loop
    finally:
        sys.path.remove(str(BENCH))
    from napari_neuroedge.config import FinetuneOptions

    opts = FinetuneOptions()
    assert loop.parse_grid(None, opts) == (None, [None])
    assert loop.parse_grid(["lr=1e-4,2e-4"], opts) == ("lr", [1e-4, 2e-4])
    name, values = loop.parse_grid(["lr=2e-4,5e-4", "crop=128,256", "cross_slices=true,false"], opts)
    assert name == "lr,crop,cross_slices" and len(values) == 8 and values[0] == "0.0002,128,True"
    got = loop.grid_options(opts, name, "0.0005,256,False")
    assert (got.lr, got.crop, got.cross_slices) == (5e-4, 256, False) and isinstance(got.crop, int)
    assert loop.grid_options(opts, "lr", 5e-4).lr == 5e-4 and loop.grid_options(opts, None, None) == opts
    with pytest.raises(AttributeError):
        loop.parse_grid(["no_such_field=1"], opts)


def test_correction_loop_marks_the_pixels_a_user_would_have_changed() -> None:
    """The simulated correction: ``corrected`` is 1 exactly where the hand label differs from the starting model's
    membranes, so the corrected-pixel weight has pixels to act on."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_correction_loop as loop
    finally:
        sys.path.remove(str(BENCH))
    from napari_neuroedge.training.labelled import LabelledSlice

    label = np.zeros((2, 6, 6), np.uint8)
    label[:, 2, :] = 1
    start = np.zeros((2, 6, 6), bool)
    start[0, 2, :3] = True  # slice 0: three membrane px found, three missed
    start[1, 4, :] = True  # slice 1: all six missed and six false ones
    data = [LabelledSlice(np.zeros((6, 6), np.float32), label[i], meta={"slice": i}) for i in range(2)]
    marked = loop.mark_changed(data, start)
    assert [int(sl.corrected.sum()) for sl in marked] == [3, 12]
    assert marked[0].corrected[2, 3:].all() and not marked[0].corrected[2, :3].any()
    assert marked[1].meta == {"slice": 1} and data[0].corrected is None  # the input slices are not changed
    with pytest.raises(ValueError):
        loop.mark_changed(data, start[:1])
