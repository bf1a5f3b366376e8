"""Difference imaging: templates, PSF-matched subtraction, DIASources, DIAObjects.

- :mod:`~twinkles.diffim.kernel`: the Alard-Lupton matching kernel, FFT convolution,
  noise decorrelation.
- :mod:`~twinkles.diffim.template`: good-seeing templates (visit selection, PSF
  homogenisation).
- :mod:`~twinkles.diffim.subtract`: :class:`ImageDifferenceTask` (subtraction, DIASource
  detection and measurement).
- :mod:`~twinkles.diffim.associate`: DIASources into DIAObjects.
"""
