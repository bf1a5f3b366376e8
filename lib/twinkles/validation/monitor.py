"""The SN/SL monitor: chosen supernovae and lensed quasars, their light curves and the truth.

Twinkles' monitor compared light curves with the simulation's inputs by hand. Here
:func:`select_targets` picks the most significant supernovae and the lensed-quasar systems
(their peak difference-image S/N from :func:`twinkles.validation.dia.transient_peaks`) and
finds their DIAObject and Object within a match radius; :func:`dia_truth` and
:func:`forced_truth` give the true flux that each light-curve point should measure, and
:func:`stamp_epochs` the visits worth a postage stamp: before, at and after the peak. A run
without a truth shows its most significant DIAObjects instead (:func:`significant_dia_objects`).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from twinkles.geometry import chord_length, nearest_id_within, unit_vectors
from twinkles.sim.truth import Truth
from twinkles.units import FWHM_PER_SIGMA
from twinkles.validation.dia import brightest_dia_sources, expected_difference_flux

__all__ = [
    "dia_truth",
    "forced_truth",
    "neighbours",
    "psf_overlap",
    "select_targets",
    "significant_dia_objects",
    "stamp_epochs",
]


def select_targets(
    peaks: Table,
    truth: Truth,
    dia_objects: Table,
    objects: Table,
    n_supernovae: int = 3,
    n_lensed_systems: int = 2,
    radius_arcsec: float = 1.0,
) -> Table:
    """The monitor's targets: the most significant supernovae and lensed-quasar systems.

    Parameters
    ----------
    peaks : Table
        From :func:`~twinkles.validation.dia.transient_peaks` (``truth_id``, ``kind``, ``ra``,
        ``dec``, ``peak_snr``, ``peak_visit``).
    truth : Truth
        For the lensed images' systems.
    dia_objects, objects : Table
        The DiaObject (``diaObjectId``, ``ra``, ``decl``) and Object (``objectId``, ``ra``,
        ``decl``) tables.
    n_supernovae, n_lensed_systems : int
        How many of each, by decreasing peak S/N (a lensed system by its brightest image;
        every image of a chosen system is a target).
    radius_arcsec : float
        Match radius to DIAObjects and Objects.

    Returns
    -------
    Table
        ``peaks`` rows of the targets with ``system_id`` (the lensed system, -1 for
        supernovae), ``diaObjectId`` and ``objectId`` (-1: none within the
        radius).
    """
    if n_supernovae < 0 or n_lensed_systems < 0:
        raise ValueError("n_supernovae and n_lensed_systems must be >= 0")
    kind = np.asarray(peaks["kind"])
    snr = np.asarray(peaks["peak_snr"], float)
    sne = np.flatnonzero(kind == "supernova")
    chosen = list(sne[np.argsort(-snr[sne])][:n_supernovae])
    system = [-1] * len(chosen)
    images = np.flatnonzero(kind == "lensed_image")
    if len(images):
        system_of_image = dict(
            zip(
                truth.lensed_images["id"].tolist(),
                truth.lensed_images["system_id"].tolist(),
                strict=True,
            )
        )
        systems = np.array([system_of_image[int(t)] for t in peaks["truth_id"][images]])
        best: dict[int, float] = {}
        for i, s in zip(images, systems, strict=True):
            best[int(s)] = max(best.get(int(s), 0.0), snr[i])
        for s in sorted(best, key=lambda s: -best[s])[:n_lensed_systems]:
            members = images[systems == s]
            chosen += list(members)
            system += [s] * len(members)
    out = peaks[np.asarray(chosen, dtype=int)]
    out["system_id"] = np.asarray(system, dtype=np.int64)
    out["diaObjectId"] = nearest_id_within(
        out["ra"],
        out["dec"],
        dia_objects["ra"],
        dia_objects["decl"],
        dia_objects["diaObjectId"],
        radius_arcsec,
    )
    out["objectId"] = nearest_id_within(
        out["ra"], out["dec"], objects["ra"], objects["decl"], objects["objectId"], radius_arcsec
    )
    return out


def significant_dia_objects(
    dia_objects: Table,
    dia_sources: Table,
    objects: Table,
    n_targets: int = 5,
    min_sources: int = 2,
    radius_arcsec: float = 1.0,
) -> Table:
    """The monitor's targets when there is no truth: the most significant DIAObjects.

    A DIAObject of at least ``min_sources`` DIASources is ranked by its most significant
    one (``|psFlux| / psFluxErr``); the table has the columns of :func:`select_targets`
    (``truth_id`` -1, ``kind`` ``dia_object``, ``peak_snr`` and ``peak_mag`` from that
    DIASource, ``diaObjectId``, and ``objectId`` within ``radius_arcsec``).
    """
    if n_targets < 0 or min_sources < 1:
        raise ValueError("n_targets must be >= 0 and min_sources >= 1")
    ids = np.asarray(dia_objects["diaObjectId"], dtype=np.int64)
    flux, snr = brightest_dia_sources(dia_objects, dia_sources)
    repeated = np.asarray(dia_objects["nDiaSources"]) >= min_sources
    chosen = np.flatnonzero(repeated)[np.argsort(-snr[repeated])][:n_targets]
    out = Table()
    out["truth_id"] = np.full(len(chosen), -1, dtype=np.int64)
    out["kind"] = np.full(len(chosen), "dia_object")
    out["ra"] = np.asarray(dia_objects["ra"], float)[chosen]
    out["dec"] = np.asarray(dia_objects["decl"], float)[chosen]
    out["peak_snr"] = snr[chosen]
    with np.errstate(divide="ignore"):
        out["peak_mag"] = -2.5 * np.log10(flux[chosen]) + 31.4
    out["system_id"] = np.full(len(chosen), -1, dtype=np.int64)
    out["diaObjectId"] = ids[chosen]
    out["objectId"] = nearest_id_within(
        out["ra"], out["dec"], objects["ra"], objects["decl"], objects["objectId"], radius_arcsec
    )
    return out


def neighbours(
    variables: Table, ra: float, dec: float, radius_arcsec: float, with_separation: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Truth ids of the variable objects within ``radius_arcsec`` of (ra, dec), in degrees,
    and with ``with_separation`` their separations (arcsec).

    Forced photometry at a position measures all of them: two supernovae of one host,
    years apart, share a DIAObject.
    """
    if len(variables) == 0:
        empty = np.array([], dtype=np.int64)
        return (empty, np.array([])) if with_separation else empty
    vectors = unit_vectors(variables["ra"], variables["dec"])
    centre = unit_vectors([ra], [dec])[0]
    near = sorted(cKDTree(vectors).query_ball_point(centre, chord_length(radius_arcsec)))
    ids = np.asarray(variables["truth_id"], dtype=np.int64)[near]
    if not with_separation:
        return ids
    chord = np.linalg.norm(vectors[near] - centre, axis=1)
    return ids, np.degrees(2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))) * 3600.0


def psf_overlap(separation_arcsec: np.ndarray, fwhm_arcsec: np.ndarray | float) -> np.ndarray:
    """Fraction of a point source's flux that a PSF fit ``separation_arcsec`` away measures.

    For a Gaussian PSF of width ``sigma`` the fit's template overlaps the source's image by
    ``exp(-d^2 / (4 sigma^2))``: 1 on the source, 0.71 at half a FWHM, 0.5 at 0.71 FWHM.
    """
    sigma = np.asarray(fwhm_arcsec, float) / FWHM_PER_SIGMA
    return np.exp(-(np.asarray(separation_arcsec, float) ** 2) / (4.0 * sigma**2))


def dia_truth(
    curve: Table,
    truth: Truth,
    truth_ids: np.ndarray,
    templates: dict[str, dict],
    separation_arcsec: np.ndarray | None = None,
    fwhm_arcsec: np.ndarray | float | None = None,
) -> np.ndarray:
    """Expected difference flux (nJy) at each point of a DiaForcedSource light curve.

    ``curve`` has ``filterName`` and ``expMidptMJD`` (from
    :func:`twinkles.catalogs.queries.light_curve`); the flux is summed over ``truth_ids``
    (see :func:`neighbours`), each weighted by its :func:`psf_overlap` with the forced
    position when ``separation_arcsec`` (per id) and ``fwhm_arcsec`` (the PSF's, one value
    or one per point) are given; NaN where the band has no template.
    """
    ids = np.atleast_1d(np.asarray(truth_ids, dtype=np.int64))
    fwhm = np.broadcast_to(np.asarray(np.nan if fwhm_arcsec is None else fwhm_arcsec), len(curve))
    out = np.full(len(curve), np.nan)
    for k, row in enumerate(curve):
        band = str(row["filterName"])
        if band not in templates:
            continue
        flux = expected_difference_flux(
            truth, ids, band, float(row["expMidptMJD"]), templates[band]
        )
        if separation_arcsec is not None and np.isfinite(fwhm[k]):
            flux = flux * psf_overlap(separation_arcsec, fwhm[k])
        out[k] = flux.sum()
    return out


def forced_truth(
    curve: Table, truth: Truth, truth_ids: np.ndarray, quiet_fraction: float = 0.02
) -> np.ndarray:
    """True flux (nJy) at each point of a ForcedSource light curve, on its Object's baseline.

    The Object under a supernova is mostly its host: the transient's true flux is added to a
    per-band baseline, the median measured flux of the visits where the transient was below
    ``quiet_fraction`` of its peak (fluxes summed over ``truth_ids``). A source that is never
    that faint (a lensed quasar) gets the median of measured minus true flux instead: the
    constant light of its lens galaxy under the same Object.
    """
    out = np.full(len(curve), np.nan)
    bands = np.asarray(curve["filterName"]).astype(str)
    mjd = np.asarray(curve["expMidptMJD"], float)
    flux = np.asarray(curve["psFlux"], float)
    ids = np.atleast_1d(np.asarray(truth_ids, dtype=np.int64))
    for band in set(bands):
        sel = bands == band
        true = sum(truth.flux(np.full(sel.sum(), t), band, mjd[sel]) for t in ids)
        quiet = true < quiet_fraction * np.nanmax(np.abs(true)) if len(true) else true
        if quiet.sum() >= 3:
            baseline = float(np.nanmedian(flux[sel][quiet]))
        else:  # always on: the constant light of what else is in the Object (a lens galaxy)
            baseline = float(np.nanmedian(flux[sel] - true))
        out[sel] = true + baseline
    return out


def stamp_epochs(mjd: np.ndarray, true_flux: np.ndarray, visits: np.ndarray) -> list[int]:
    """Visits for postage stamps: the faintest before the peak, the peak, the faintest after.

    Arguments are per light-curve point; repeated choices are dropped, the order is by time.
    """
    mjd, true_flux, visits = (np.asarray(a) for a in (mjd, true_flux, visits))
    ok = np.isfinite(true_flux)
    if not ok.any():
        return []
    mjd, true_flux, visits = mjd[ok], true_flux[ok], visits[ok]
    peak = int(np.argmax(np.abs(true_flux)))
    picks = [peak]
    before = np.flatnonzero(mjd < mjd[peak])
    after = np.flatnonzero(mjd > mjd[peak])
    if len(before):
        picks.append(int(before[np.argmin(np.abs(true_flux[before]))]))
    if len(after):
        picks.append(int(after[np.argmin(np.abs(true_flux[after]))]))
    picks = sorted(set(picks), key=lambda i: mjd[i])
    return [int(visits[i]) for i in picks]
