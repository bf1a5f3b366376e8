"""The base of every configuration: of each algorithm's and of each run-configuration section.

In the style of LSST ``pex_config``: a configuration is a typed, documented object whose every
field has a default, a unit in its description and a validated range, built once and never
changed. The run's schema (:mod:`twinkles.config`) is made of these sections; the algorithms
(``DetectionConfig``, ``ImageDifferenceConfig``, ...) subclass it directly and do not depend
on the run schema.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Section"]


class Section(BaseModel):
    """Strict, frozen configuration: unknown keys and silent type coercion are errors.

    Each field has a default and a description (with its unit); ``twinkles config show``
    prints them for a run's sections.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
