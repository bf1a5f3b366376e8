"""The warm kernel's start: science imports, and numba started once for all its notebooks."""

from __future__ import annotations

from twinkles.jit import initialize
from twinkles.workflow.kernel import WarmKernel


def test_initialize_loads_the_probe_in_this_process():
    from twinkles import jit

    initialize()
    assert len(jit._probe.signatures) == 1


def test_warm_kernel_starts_numba_and_keeps_it_across_resets(tmp_path):
    with WarmKernel(imports=("numpy", "twinkles.jit")) as kernel:
        # started: the probe's compiled code is loaded before any notebook runs
        assert kernel.run("import twinkles.jit; print(len(twinkles.jit._probe.signatures))") == [
            "1"
        ]
        kernel.reset(tmp_path)
        assert kernel.run("import twinkles.jit; print(len(twinkles.jit._probe.signatures))") == [
            "1"
        ]
    with WarmKernel(imports=("numpy",)) as kernel:
        # a kernel without twinkles.jit among its imports does not start numba
        assert kernel.run("import sys; print('twinkles.jit' in sys.modules)") == ["False"]
