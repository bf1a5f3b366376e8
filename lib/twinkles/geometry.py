"""Sky and sensor geometry: gnomonic (tangent-plane) projections, unit vectors for KD-tree
matching, pixel scales, and the polynomial terms of a quantity that varies over the sensor."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

__all__ = [
    "chord_length",
    "friends_of_friends",
    "nearest_id_within",
    "pixel_scale_arcsec",
    "polynomial_terms",
    "random_positions_in_disc",
    "sky_to_tangent",
    "spatial_terms",
    "tangent_to_sky",
    "unit_vectors",
]


def tangent_to_sky(
    xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane offsets (deg; xi towards East, eta North) to (ra, dec) in deg."""
    x, y = np.deg2rad(np.asarray(xi)), np.deg2rad(np.asarray(eta))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    denom = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, denom)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def sky_to_tangent(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in deg to tangent-plane offsets (deg; xi towards East, eta North)."""
    a, d = np.deg2rad(np.asarray(ra)), np.deg2rad(np.asarray(dec))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    return np.rad2deg(xi), np.rad2deg(eta)


def random_positions_in_disc(
    n: int, ra0: float, dec0: float, radius_deg: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform in a disc of ``radius_deg`` around (ra0, dec0)."""
    r = radius_deg * np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    return tangent_to_sky(r * np.sin(phi), r * np.cos(phi), ra0, dec0)


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(ra, dec) in deg as unit vectors (n, 3): KD-tree distances are then chords."""
    a, d = np.deg2rad(np.asarray(ra, dtype=float)), np.deg2rad(np.asarray(dec, dtype=float))
    return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def chord_length(radius_arcsec: float) -> float:
    """The chord between unit vectors ``radius_arcsec`` apart on the sky."""
    return float(2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0))


def friends_of_friends(points: np.ndarray, radius: float) -> np.ndarray:
    """Group label of each point (rows of ``points``): points within ``radius`` of one
    another, directly or through a chain of such neighbours, share a label."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=int)
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def nearest_id_within(
    ra: np.ndarray,
    dec: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    cat_ids: np.ndarray,
    radius_arcsec: float,
) -> np.ndarray:
    """Per position (deg), the id of the nearest catalog entry within the radius, else -1.

    Not one to one: two positions may get the same entry (as two images of one lensed
    quasar that share a DIAObject).
    """
    from scipy.spatial import cKDTree

    out = np.full(len(ra), -1, dtype=np.int64)
    if len(cat_ids) == 0 or len(ra) == 0:
        return out
    dist, idx = cKDTree(unit_vectors(cat_ra, cat_dec)).query(unit_vectors(ra, dec))
    near = dist <= chord_length(radius_arcsec)
    out[near] = np.asarray(cat_ids, dtype=np.int64)[idx[near]]
    return out


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale (arcsec per pixel) of a celestial WCS at its reference point."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def spatial_terms(X: np.ndarray, Y: np.ndarray, degree: int, radial: bool = False) -> np.ndarray:
    """The terms of a PSF's (or another sensor map's) spatial variation: :func:`polynomial_terms`
    up to ``degree``, and ``X^2 + Y^2`` when ``radial`` and the degree is below 2 (a focal
    plane's PSF broadens with the distance from its centre: one term where a full degree 2
    needs three more)."""
    terms = polynomial_terms(X, Y, degree)
    if radial and degree < 2:
        X, Y = np.atleast_1d(X).astype(float), np.atleast_1d(Y).astype(float)
        terms = np.column_stack([terms, X * X + Y * Y])
    return terms


def polynomial_terms(X: np.ndarray, Y: np.ndarray, degree: int) -> np.ndarray:
    """Monomials X^i Y^j with i + j <= degree, shape (n, n_terms); order 1, X, Y, X^2, XY, ..."""
    X, Y = np.atleast_1d(X).astype(float), np.atleast_1d(Y).astype(float)
    cols = [X**i * Y ** (d - i) for d in range(degree + 1) for i in range(d, -1, -1)]
    return np.stack(cols, axis=1)
