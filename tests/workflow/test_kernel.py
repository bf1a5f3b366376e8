"""The warm kernel's start: science imports, numba started once for all its notebooks, and the
figures' set-up."""

from __future__ import annotations

import numpy as np

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


def _figure_draws_and_pngs(imports: tuple[str, ...]) -> tuple[int, list[str]]:
    """How often a new figure is drawn in a kernel started with ``imports``, and the PNGs the
    cell that made it displayed."""
    import nbformat
    from nbclient import NotebookClient

    count_draws = (
        "from matplotlib.figure import Figure\n"
        "_draws = []\n"
        "_draw = Figure.draw\n"
        "def _counted(self, *args, **kwargs):\n"
        "    _draws.append(1)\n"
        "    return _draw(self, *args, **kwargs)\n"
        "Figure.draw = _counted"
    )
    make_figure = (
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.imshow([[0, 1], [2, 3]])"
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(count_draws),
            nbformat.v4.new_code_cell(make_figure),
            nbformat.v4.new_code_cell("print(len(_draws))"),
        ]
    )
    with WarmKernel(imports=imports) as kernel:
        client = NotebookClient(nb, km=kernel.km, timeout=60, kernel_name="python3")
        client.kc = kernel.kc
        client.execute()
    pngs = [o["data"]["image/png"] for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
    return int(nb.cells[2].outputs[0].text), pngs


def _pixels(png_base64: str):
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))))


def test_warm_kernel_renders_each_figure_once_and_displays_the_same_pixels():
    draws_warm, pngs_warm = _figure_draws_and_pngs(("numpy", "matplotlib.pyplot"))
    # without pyplot among the start's imports: the inline backend as a fresh kernel has it
    draws_stock, pngs_stock = _figure_draws_and_pngs(("numpy",))
    assert len(pngs_warm) == len(pngs_stock) == 1
    # another zlib level, the same image
    assert np.array_equal(_pixels(pngs_warm[0]), _pixels(pngs_stock[0]))
    assert draws_stock == draws_warm + 1  # pyplot's hook rendered the figure before its PNG


def test_kernel_usage_counts_system_time_apart(tmp_path):
    with WarmKernel(imports=("numpy",)) as kernel:
        base = kernel.reset(tmp_path)
        # 400 MB touched for the first time: page faults, system time of the kernel's own
        kernel.run("import numpy as np; _a = np.ones(100_000_000, np.float32); del _a")
        usage = kernel.usage()
    assert usage.sys_s > base.sys_s
    assert usage.cpu_s - base.cpu_s >= usage.sys_s - base.sys_s > 0
