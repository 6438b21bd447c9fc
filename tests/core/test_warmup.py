"""The fine-tune path's imports, made ahead of a job (issue 22: mid-job they held the GIL and froze the window)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_warm_up_imports_what_the_first_training_step_would_in_a_fresh_process():
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # as the napari plugin does
        import torch
        from napari_neuroedge.training.warmup import TRAINING_MODULES, import_training_path
        assert "torch._dynamo" not in sys.modules
        import_training_path()
        assert "torch._dynamo" in sys.modules and "sympy" in sys.modules
        assert all(m in sys.modules for m in TRAINING_MODULES)
        before = set(sys.modules)
        torch.optim.Adam(torch.nn.Linear(2, 2).parameters())  # the training loop's optimiser: nothing new to import
        from napari_neuroedge.training.finetune import iter_finetune  # noqa: F401
        new = set(sys.modules) - before
        assert not new, sorted(new)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
