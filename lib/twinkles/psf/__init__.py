"""Measuring the PSF: the spatially varying model of :mod:`twinkles.image.psf` fitted to a
visit's stars (determine), with its variation made of deformation modes (modes)."""
