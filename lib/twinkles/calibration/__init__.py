"""Astrometric and photometric calibration against the reference catalog; visit summaries."""
