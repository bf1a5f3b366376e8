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


def test_recipe_figures_are_kept_as_quickly_compressed_png(tmp_path):
    # twinkles.plotting imported at the kernel's start, before pyplot chose its backend (the
    # warm kernel's order), and the figure drawn as a recipe draws it
    code = """
import base64
import matplotlib.pyplot as plt
import numpy as np
from twinkles.plotting import PNG_COMPRESS_LEVEL, show_image
fig, ax = plt.subplots()
show_image(ax, np.random.default_rng(1).normal(size=(256, 256)))
png = get_ipython().display_formatter.format(fig)[0]["image/png"]
png = base64.b64decode(png) if isinstance(png, str) else png
idat = png.index(b"IDAT") + 4
# the zlib header's FLEVEL bits: 1 for levels 2-5, 2 for PIL's default 6
print(PNG_COMPRESS_LEVEL, png[idat] == 0x78, png[idat + 1] >> 6)
"""
    with WarmKernel(imports=("twinkles.plotting",)) as kernel:
        kernel.reset(tmp_path)
        assert kernel.run(code) == ["3 True 1"]
