"""twinkles: an emulation of the LSST Data Management Level 2 pipeline as a literate cookbook.

The library behind the recipes in ``cookbook/``: the simulated sky (``twinkles.sim``), the data
repository (``twinkles.butler``), run configuration (``twinkles.config``) and the command line
(``twinkles.cli``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twinkles")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
