"""Multi-visit images on the patch: the sky map, warps and coadds."""
