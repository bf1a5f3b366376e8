"""Kernels for executing recipes: warm (shared across the data ids of a task) or fresh.

A fresh Jupyter kernel costs ~0.65 s to start, and a recipe's science imports (numpy, astropy,
photutils, matplotlib, GalSim) another ~1.6 s: paid per notebook, that is the start-up overhead
papermill has on every data id. A :class:`WarmKernel` starts one kernel per task, imports the
science stack once (and starts numba, :mod:`twinkles.jit`; and has each figure rendered once,
:data:`FIGURE_SETUP`), and before each notebook resets it:

* ``%reset -f`` empties the user namespace (imported modules stay loaded: that is the saving);
* open figures are closed, the working directory and the notebook's environment variables
  (where the butler records its I/O) are set, the execution counter restarts at 1
  (so each executed notebook numbers its cells 1, 2, ... as a fresh kernel would);
* the kernel's peak-RSS counter is reset (Linux ``/proc/self/clear_refs``), so the CPU time and
  peak memory measured around each notebook are that notebook's own; and when the recipe
  changes, the memory the last one freed is handed back to the system (glibc ``malloc_trim``),
  so that one step's peak is not another's heap kept by the tasks' malloc settings. Between
  notebooks of one recipe the heap is kept: their working sets are alike, and reusing it
  spares the page faults of fresh memory (on the VMs this runs on, 1-2 s of system time for a
  run1-size image_difference).

Each data id still gets its own executed notebook, with papermill's parameter injection and
error marker: the kernel is lent to papermill through an engine registered in papermill's
engine registry (``twinkles-warm``). A kernel that dies is replaced before the next notebook.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

from twinkles.workflow.environment import MALLOC_ENV

__all__ = ["ENGINE_NAME", "KernelUsage", "WarmKernel", "WarmKernelEngine"]

ENGINE_NAME = "twinkles-warm"
#: Seconds between interim saves of a notebook being executed.
SAVE_EVERY_S = 10.0
#: What every recipe imports: loaded once per warm kernel.
SCIENCE_IMPORTS = (
    "numpy",
    "scipy.ndimage",
    "astropy.table",
    "astropy.io.fits",
    "astropy.wcs",
    "matplotlib.pyplot",
    "galsim",
    "scipy.spatial",
    "twinkles.config",
    "twinkles.plotting",
    "twinkles.sim.render",
    "twinkles.isr.eimage",
    "twinkles.isr.cosmic_rays",
    "twinkles.detection.detect",
    "twinkles.psf.determine",
    "twinkles.measurement.apcorr",
    "twinkles.measurement.catalog",
    "twinkles.calibration.astrometry",
    "twinkles.calibration.photometry",
    "twinkles.calibration.summary",
    "twinkles.coadd.warp",
    "twinkles.coadd.assemble",
    "twinkles.coadd.objects",
    "twinkles.measurement.aperture",
    "twinkles.measurement.forced",
    "twinkles.diffim.subtract",
    "pyarrow.parquet",  # the butler's tables
    "twinkles.jit",
)
#: Run after the imports: numba's one-time start (0.2-0.3 s), which any recipe's first compiled
#: call would otherwise pay (see :mod:`twinkles.jit`).
SCIENCE_START = "twinkles.jit.initialize()"
#: Run after pyplot's import, for the figures the inline backend displays:
#:
#: * pyplot's backend (the kernel's inline one) is resolved now, which installs pyplot's post-cell
#:   hook, and the hook is taken out again: it drew every new figure at the end of a cell, and
#:   the inline backend's own hook then drew it once more into the PNG it displays;
#: * the PNGs are compressed at zlib level 3 instead of Pillow's default 6: the recipes' images
#:   of the sensor are noise-like, on which level 6 takes several times longer for no smaller a
#:   file (lossless either way).
FIGURE_SETUP = (
    "import matplotlib as _mpl, matplotlib.pyplot as _plt\n"
    "from matplotlib_inline.config import InlineBackend as _Inline\n"
    "_plt.switch_backend(_mpl.get_backend())\n"
    "_plt.uninstall_repl_displayhook()\n"
    "_Inline.instance().print_figure_kwargs = {\n"
    "    **_Inline.instance().print_figure_kwargs, 'pil_kwargs': {'compress_level': 3}\n"
    "}\n"
    "del _mpl, _plt, _Inline"
)
log = logging.getLogger(__name__)

_PROBE = """
import json as _json, resource as _resource
_usage = _resource.getrusage(_resource.RUSAGE_SELF)
_peak = _usage.ru_maxrss / 1024.0
try:
    with open("/proc/self/status") as _status:
        for _line in _status:
            if _line.startswith("VmHWM:"):
                _peak = int(_line.split()[1]) / 1024.0
except OSError:
    pass
print(_json.dumps({
    "cpu_s": _usage.ru_utime + _usage.ru_stime, "sys_s": _usage.ru_stime, "peak_rss_mb": _peak
}))
"""

_RESET = """
%reset -f
import os as _os
_os.chdir({cwd!r})
_os.environ.update({env!r})
try:
    import matplotlib.pyplot as _plt
    _plt.close("all")
except ImportError:
    pass
if {release!r}:
    import gc as _gc
    _gc.collect()
    try:  # hand the heap the last recipe freed back to the system
        import ctypes as _ctypes
        _ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
try:
    with open("/proc/self/clear_refs", "w") as _refs:
        _refs.write("5")  # reset the peak RSS (VmHWM) of this process
except OSError:
    pass
"""


@dataclass
class KernelUsage:
    """CPU seconds (user and system), of which system, and peak resident memory (MB) of the
    kernel while it ran one notebook. System time is mostly the page faults of memory the
    process touches for the first time; on a virtual machine whose host hands out memory
    lazily it can exceed the user time."""

    cpu_s: float
    peak_rss_mb: float
    sys_s: float = 0.0


class WarmKernel:
    """One Jupyter kernel, kept alive and reset between notebooks.

    Parameters
    ----------
    kernel_name : str
        Kernel spec (``python3``: the interpreter running twinkles).
    imports : tuple of str
        Modules to import once when the kernel starts.
    startup_timeout : float
        Seconds to wait for the kernel to start.
    output : int, optional
        File descriptor that the kernel process's standard output and error go to (a
        long-lived worker's own log); by default they are inherited.
    """

    def __init__(
        self,
        kernel_name: str = "python3",
        imports: tuple[str, ...] = SCIENCE_IMPORTS,
        startup_timeout: float = 60.0,
        output: int | None = None,
    ):
        self.kernel_name = kernel_name
        self.output = output
        self.imports = imports
        self.startup_timeout = startup_timeout
        self._client: NotebookClient | None = None
        self._last_recipe: str | None = None
        self.starts = 0

    @property
    def km(self):
        """The kernel manager (the kernel is started if it is not running)."""
        return self._ensure().km

    @property
    def kc(self):
        """The kernel client (the kernel is started if it is not running)."""
        return self._ensure().kc

    def _ensure(self) -> NotebookClient:
        if self.alive():
            return self._client
        self.shutdown()
        client = NotebookClient(
            nbformat.v4.new_notebook(),
            kernel_name=self.kernel_name,
            startup_timeout=self.startup_timeout,
            timeout=600,
        )
        client.km = client.create_kernel_manager()
        # the kernel does the recipes' work: it gets the tasks' malloc settings (a Slurm task
        # inherits the submitting shell's environment, so they are set here)
        streams = {} if self.output is None else {"stdout": self.output, "stderr": self.output}
        client.start_new_kernel(env={**os.environ, **MALLOC_ENV}, **streams)
        client.start_new_kernel_client()
        self._client = client
        self.starts += 1
        if self.imports:
            start = [f"import {m}" for m in self.imports]
            if "twinkles.jit" in self.imports:
                start.append(SCIENCE_START)
            if "matplotlib.pyplot" in self.imports:
                start.append(FIGURE_SETUP)
            # the modules' objects live as long as the kernel: frozen, no garbage collection
            # traverses them again (a full collection, which %reset does, costs ~0.1 s
            # otherwise; Python's gc.freeze, made for processes that fork after imports)
            start.append("import gc as _gc; _gc.freeze(); del _gc")
            self.run("\n".join(start))
        return client

    def run(self, code: str) -> list[str]:
        """Execute control code in the kernel (not part of any notebook); its stdout lines."""
        client = self._ensure()
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        runner = NotebookClient(nb, km=client.km, timeout=600, kernel_name=self.kernel_name)
        runner.kc = client.kc
        runner.execute()
        outputs = nb.cells[0].outputs
        errors = [o for o in outputs if o.output_type == "error"]
        if errors:
            raise RuntimeError(f"kernel control code failed: {errors[0].ename}: {errors[0].evalue}")
        return "".join(o.text for o in outputs if o.output_type == "stream").splitlines()

    def reset(
        self, cwd: str | Path, env: dict[str, str] | None = None, recipe: str | None = None
    ) -> KernelUsage:
        """Empty the namespace and counters before the next notebook, set its working
        directory and environment variables (``env``); the usage baseline. The freed heap is
        handed back when ``recipe`` is not the previous notebook's (or is None)."""
        release = recipe is None or recipe != self._last_recipe
        self._last_recipe = recipe
        # the probe runs in the same control cell, and the cell counter is set last, so the
        # notebook's first cell is In [1]
        code = (
            _RESET.format(cwd=str(cwd), env=dict(env or {}), release=release)
            + _PROBE
            + "get_ipython().execution_count = 1\n"
        )
        return KernelUsage(**json.loads(self.run(code)[-1]))

    def usage(self) -> KernelUsage:
        """The kernel's cumulative CPU seconds, and its peak RSS since the last reset."""
        return KernelUsage(**json.loads(self.run(_PROBE)[-1]))

    def alive(self) -> bool:
        """Whether the kernel process is running."""
        client = self._client
        return client is not None and client.km is not None and run_sync(client.km.is_alive)()

    def shutdown(self) -> None:
        """Stop the kernel (if running)."""
        client, self._client = self._client, None
        if client is None or client.km is None:
            return
        try:
            if client.kc is not None:
                client.kc.stop_channels()
            run_sync(client.km.shutdown_kernel)(now=True)
        except Exception as exc:
            log.debug("kernel shutdown: %s", exc)
        finally:
            try:
                run_sync(client.km.cleanup_resources)()
            except Exception as exc:
                log.debug("kernel cleanup: %s", exc)

    def __enter__(self) -> WarmKernel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class WarmKernelEngine(NBClientEngine):
    """Papermill engine executing a notebook in a :class:`WarmKernel` it is given."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man,
        kernel_name,
        log_output=False,
        stdout_file=None,
        stderr_file=None,
        start_timeout=60,
        execution_timeout=None,
        warm_kernel: WarmKernel | None = None,
        **kwargs,
    ):
        """Execute a papermill-managed notebook in ``warm_kernel`` instead of a new kernel
        (papermill's engine interface; other arguments as papermill's).
        """
        if warm_kernel is None:
            raise ValueError(f"the {ENGINE_NAME} engine needs warm_kernel=")
        client = PapermillNotebookClient(
            nb_man,
            km=warm_kernel.km,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logging.getLogger("papermill"),
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        client.kc = warm_kernel.kc
        # papermill writes the whole notebook, figures included, at every cell's start and end
        # (~60 writes of a ~1 MB per-visit notebook, ~10 ms each); an interim copy every
        # SAVE_EVERY_S keeps a hung visit inspectable, and papermill's final save after this
        # returns is not throttled
        save = nb_man.save

        def throttled_save(**kwargs):
            if (nb_man.now() - nb_man.last_save_time).total_seconds() >= SAVE_EVERY_S:
                save(**kwargs)

        nb_man.save = throttled_save
        try:
            return client.execute()
        finally:
            del nb_man.save


papermill_engines.register(ENGINE_NAME, WarmKernelEngine)
