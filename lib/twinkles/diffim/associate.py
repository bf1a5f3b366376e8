"""Association of DIASources into DIAObjects (LSST's association, run over a data release).

DIASources of every visit are linked when they lie within ``radius_arcsec`` of each other
(friends of friends: a connected-components pass over all close pairs), so the grouping does
not depend on the order the visits are read in. A DIAObject takes the smallest
``diaSourceId`` of its group as its ``diaObjectId`` (order-independent too), the mean
position of its DIASources, their count, first and last MJD, and per band the
inverse-variance weighted mean difference flux.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from twinkles.bands import BANDS
from twinkles.geometry import chord_length, unit_vectors

__all__ = ["associate_dia_sources"]


def associate_dia_sources(
    sources: Table,
    bands: np.ndarray,
    radius_arcsec: float = 0.5,
    min_reliability: float | None = None,
) -> tuple[Table, Table]:
    """Group DIASources into DIAObjects.

    Parameters
    ----------
    sources : Table
        DIASources of all visits (``diaSourceId``, ``ra``, ``decl``, ``midPointTai``,
        ``psFlux``, ``psFluxErr``).
    bands : array of str
        The filter of each DIASource.
    radius_arcsec : float
        Linking length (arcsec).
    min_reliability : float, optional
        With it (and a ``reliability`` column, :mod:`~twinkles.diffim.realbogus`), each
        DIAObject counts the DIASources at least this reliable (``nReliableDiaSources``) and
        keeps the highest score (``reliabilityMax``). Every DIASource is associated either way.

    Returns
    -------
    sources : Table
        The input with ``diaObjectId``, sorted by ``diaSourceId``.
    objects : Table
        The DiaObject table (columns of the database's DiaObject, less ``runId``).
    """
    if not radius_arcsec > 0:
        raise ValueError(f"association radius must be positive, got {radius_arcsec} arcsec")
    order = np.argsort(np.asarray(sources["diaSourceId"]), kind="stable")
    sources = sources[order]
    bands = np.asarray(bands).astype(str)[order]
    n = len(sources)
    xyz = unit_vectors(sources["ra"], sources["decl"])
    pairs = (
        cKDTree(xyz).query_pairs(chord_length(radius_arcsec), output_type="ndarray")
        if n
        else np.zeros((0, 2), int)
    )
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    label = connected_components(graph, directed=False)[1] if n else np.zeros(0, dtype=int)
    ids = np.asarray(sources["diaSourceId"], dtype=np.int64)
    # sources are sorted by id, so the first member of each group holds its smallest id
    first = np.unique(label, return_index=True)[1]
    object_of_label = np.empty(len(first), dtype=np.int64)
    object_of_label[label[first]] = ids[first]
    sources["diaObjectId"] = object_of_label[label] if n else np.zeros(0, np.int64)

    groups = np.unique(label)
    mjd = np.asarray(sources["midPointTai"], float)
    flux = np.asarray(sources["psFlux"], float)
    err = np.asarray(sources["psFluxErr"], float)
    scored = min_reliability is not None
    if scored and "reliability" not in sources.colnames:
        raise ValueError("associate_dia_sources: min_reliability given, but no reliability column")
    reliability = np.asarray(sources["reliability"], float) if scored else np.full(n, np.nan)
    columns: dict[str, list] = {
        "diaObjectId": [],
        "ra": [],
        "decl": [],
        "nDiaSources": [],
        "nReliableDiaSources": [],
        "reliabilityMax": [],
        "firstMjd": [],
        "lastMjd": [],
    }
    for b in BANDS:
        for suffix in ("psFluxMean", "psFluxMeanErr", "psFluxNdata"):
            columns[f"{b}_{suffix}"] = []
    members_of = (
        np.split(np.argsort(label, kind="stable"), np.cumsum(np.bincount(label))[:-1]) if n else []
    )
    for g, members in zip(groups, members_of, strict=True):
        mean = xyz[members].mean(axis=0)
        mean /= np.linalg.norm(mean)
        columns["diaObjectId"].append(object_of_label[g])
        columns["ra"].append(float(np.degrees(np.arctan2(mean[1], mean[0])) % 360.0))
        columns["decl"].append(float(np.degrees(np.arcsin(mean[2]))))
        columns["nDiaSources"].append(len(members))
        columns["nReliableDiaSources"].append(
            int(np.sum(reliability[members] >= min_reliability)) if scored else -1
        )
        columns["reliabilityMax"].append(float(np.max(reliability[members])))
        columns["firstMjd"].append(float(mjd[members].min()))
        columns["lastMjd"].append(float(mjd[members].max()))
        for b in BANDS:
            sel = members[(bands[members] == b) & np.isfinite(flux[members]) & (err[members] > 0)]
            if len(sel):
                wgt = 1.0 / err[sel] ** 2
                columns[f"{b}_psFluxMean"].append(float(np.sum(wgt * flux[sel]) / wgt.sum()))
                columns[f"{b}_psFluxMeanErr"].append(float(1.0 / np.sqrt(wgt.sum())))
            else:
                columns[f"{b}_psFluxMean"].append(np.nan)
                columns[f"{b}_psFluxMeanErr"].append(np.nan)
            columns[f"{b}_psFluxNdata"].append(len(sel))
    objects = Table(columns)
    objects["diaObjectId"] = np.asarray(objects["diaObjectId"], dtype=np.int64)
    for b in BANDS:
        objects[f"{b}_psFluxNdata"] = np.asarray(objects[f"{b}_psFluxNdata"], dtype=np.int64)
    for name in ("nDiaSources", "nReliableDiaSources"):
        objects[name] = np.asarray(objects[name], dtype=np.int64)
    return sources, objects
