"""Source measurement: PSF and aperture fluxes, aperture correction, the src catalog."""
