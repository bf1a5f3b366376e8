"""The PSF: a pixelized, spatially varying model (pixel), its measurement (determine), shifts."""
