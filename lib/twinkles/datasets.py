"""The dataset types of the pipeline (LSST names where LSST has one), and their registry.

A *dataset type* names a kind of product (``calexp``), its data-id keys (``visit``), the path
template under a run's repository (``runs/<name>/repo``) and the storage format the butler
writes it in. The pipeline's types are registered below, so that ``twinkles.butler``, which
imports this module, knows every product whatever module made it; a test or a user's step may
register more.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter

__all__ = ["DatasetType", "dataset_type", "dataset_types", "register_dataset_type"]


@dataclass(frozen=True)
class DatasetType:
    """A kind of product: its data-id keys, where it lives and how it is stored."""

    name: str
    dimensions: tuple[str, ...]
    template: str
    storage: str
    doc: str


_DATASET_TYPES: dict[str, DatasetType] = {}


def register_dataset_type(
    name: str, dimensions: tuple[str, ...], template: str, storage: str, doc: str
) -> DatasetType:
    """Add a dataset type; ``template`` is a path relative to the repository root."""
    fields = {f for _, f, _, _ in Formatter().parse(template) if f}
    if fields != set(dimensions):
        raise ValueError(f"dataset type {name}: template fields {fields} != {set(dimensions)}")
    dstype = DatasetType(name, tuple(dimensions), template, storage, doc)
    _DATASET_TYPES[name] = dstype
    return dstype


def dataset_types() -> dict[str, DatasetType]:
    """Every registered dataset type, by name."""
    return dict(_DATASET_TYPES)


def dataset_type(name: str) -> DatasetType:
    """The registered dataset type called ``name``; a KeyError lists the known ones."""
    try:
        return _DATASET_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(_DATASET_TYPES))
        raise KeyError(f"unknown dataset type {name!r}; known: {known}") from None


# --- the simulated sky (twinkles.sim) -------------------------------------------------------
register_dataset_type(
    "visitTable",
    (),
    "sim/visits.parquet",
    "table",
    "OpSim-like visit table: what the telescope knows about each visit.",
)
register_dataset_type(
    "skyFingerprint",
    (),
    "sim/fingerprint.json",
    "json",
    "The configuration the sky was simulated from; written last, so it marks a complete sky.",
)
register_dataset_type(
    "visitConditionsTruth",
    (),
    "truth/visit_conditions.parquet",
    "table",
    "Per-visit truth: zero point, sky counts, PSF parameters, true pointing and rotation.",
)
for _name, _doc in [
    ("Stars", "stars: magnitudes, colours, variability"),
    ("Galaxies", "galaxies: bulge + disk Sersic parameters, colours, redshifts"),
    ("Supernovae", "SNe Ia: host, position, SALT2-like parameters"),
    ("LensedSystems", "lensed quasars: lens, source, DRW parameters"),
    ("LensedImages", "lensed-quasar images: positions, magnifications, time delays"),
    ("QuasarVariability", "DRW light curve of each lensed quasar source on a 1-day grid"),
    ("LightCurves", "tabulated light curves (id, mjd, band, flux) replacing objects' models"),
]:
    register_dataset_type(
        f"truth{_name}",
        (),
        f"truth/{_name[0].lower() + _name[1:]}.parquet",
        "table",
        f"Truth table of {_doc}.",
    )
register_dataset_type(
    "refcat",
    (),
    "refcat/refcat.parquet",
    "table",
    "Reference catalog for astrometric and photometric calibration.",
)
register_dataset_type(
    "inputManifest",
    (),
    "inputs/manifest.json",
    "json",
    "An external run's user files (eimages, reference catalog, truth) with their checksums.",
)
register_dataset_type(
    "eimage",
    ("visit",),
    "eimage/eimage_{visit:08d}.fits",
    "fits",
    "Single-sensor image in electrons, simulated or ingested (docs/eimage-format.md).",
)
register_dataset_type(
    "eimageTruth",
    ("visit",),
    "truth/eimage/eimage_truth_{visit:08d}.json",
    "json",
    "What an eimage was drawn with: true WCS, zero point, sky, PSF, cosmic rays.",
)

# --- single-visit processing (process_eimage) ------------------------------------------------
register_dataset_type(
    "calexp",
    ("visit",),
    "calexp/calexp_{visit:08d}.fits",
    "exposure",
    "Calibrated exposure: background-subtracted image, mask, variance, PSF, WCS, zero point.",
)
register_dataset_type(
    "calexpBackground",
    ("visit",),
    "calexp/background_{visit:08d}.fits",
    "fits",
    "The background subtracted from the calexp (coarse grid; BackgroundModel.evaluate).",
)
register_dataset_type(
    "src",
    ("visit",),
    "src/src_{visit:08d}.parquet",
    "table",
    "Single-visit sources: positions, PSF and aperture fluxes (nJy), shapes, flags.",
)
register_dataset_type(
    "visitSummary",
    ("visit",),
    "calexp/summary_{visit:08d}.json",
    "json",
    "Visit quality: PSF FWHM, zero point, sky, astrometric rms, depth (a CcdVisit row).",
)

# --- static sky (make_skymap, make_coadd, coadd_sources, forced_photometry) -------------------
register_dataset_type(
    "skyMap",
    (),
    "coadd/skymap.json",
    "json",
    "The patch: tangent point, pixel scale, size (twinkles.coadd.skymap.SkyMap).",
)
register_dataset_type(
    "deepCoadd_directWarp",
    ("visit",),
    "warps/warp_{visit:08d}.fits",
    "exposure",
    "A calexp resampled onto the patch's bounding box of it (nJy; X0, Y0 its offset).",
)
register_dataset_type(
    "deepCoadd",
    ("filter",),
    "coadd/deepCoadd_{filter}.fits",
    "exposure",
    "Coadd of a filter's visits (nJy): clipped weighted mean, variance, coadd PSF.",
)
register_dataset_type(
    "deepCoadd_nImage",
    ("filter",),
    "coadd/nImage_{filter}.fits",
    "fits",
    "Number of warps contributing to each coadd pixel.",
)
register_dataset_type(
    "deepCoadd_summary",
    ("filter",),
    "coadd/summary_{filter}.json",
    "json",
    "Visits and weights of a coadd, clipped pixels, measured noise against predicted, depth.",
)
register_dataset_type(
    "deepCoadd_ref",
    ("patch",),
    "coadd/object_{patch}.parquet",
    "table",
    "The Object table: merged multi-band detections measured on every coadd (nJy).",
)
register_dataset_type(
    "forced_src",
    ("visit",),
    "forced/forced_src_{visit:08d}.parquet",
    "table",
    "ForcedSource: PSF and aperture fluxes (nJy) of every Object on a calexp.",
)
register_dataset_type(
    "staticSkyMetrics",
    (),
    "validation/static_sky.json",
    "json",
    "Static-sky checks against the truth: coadd noise, Object completeness, PA1, pulls.",
)

# --- difference imaging (make_template, image_difference, associate_dia, forced_dia_photometry)
register_dataset_type(
    "goodSeeingCoadd",
    ("filter",),
    "template/template_{filter}.fits",
    "exposure",
    "Template: the best-seeing visits of a filter, PSF-homogenised and coadded (nJy).",
)
register_dataset_type(
    "goodSeeingCoadd_summary",
    ("filter",),
    "template/summary_{filter}.json",
    "json",
    "Template visits, their weights and MJDs, the seeing window and the target PSF width.",
)
register_dataset_type(
    "deepDiff_matchedWarp",
    ("visit",),
    "template/matched_{visit:08d}.fits",
    "exposure",
    "A template visit's warp convolved to the template's PSF (intermediate, removed).",
)
register_dataset_type(
    "deepDiff_differenceExp",
    ("visit",),
    "diff/diffexp_{visit:08d}.fits",
    "exposure",
    "Difference image on the calexp's pixels (nJy): variance, mask, difference PSF.",
)
register_dataset_type(
    "deepDiff_summary",
    ("visit",),
    "diff/summary_{visit:08d}.json",
    "json",
    "Kernel fit (stamps, chi^2, sum), which image was convolved, noise ratio, DIASources.",
)
register_dataset_type(
    "diaSrc",
    ("visit",),
    "diff/diaSrc_{visit:08d}.parquet",
    "table",
    "A visit's DIASources: PSF flux (nJy) on the difference image, S/N, dipole, flags.",
)
register_dataset_type(
    "injectedSources",
    ("visit",),
    "injection/injected_{visit:08d}.parquet",
    "table",
    "Point sources injected into a calexp (nJy), found or not on its injected difference.",
)
register_dataset_type(
    "injectedDiaSrc",
    ("visit",),
    "injection/diaSrc_{visit:08d}.parquet",
    "table",
    "DIASources of the difference of the injected calexp (with their real/bogus features).",
)
register_dataset_type(
    "diaSourceTable",
    (),
    "dia/diaSource.parquet",
    "table",
    "Every DIASource of the run with the diaObjectId it was associated with.",
)
register_dataset_type(
    "diaObject",
    (),
    "dia/diaObject.parquet",
    "table",
    "DIAObjects: mean position, number of DIASources, first/last MJD, mean flux per band.",
)
register_dataset_type(
    "forced_diaSrc",
    ("visit",),
    "dia/forced_diaSrc_{visit:08d}.parquet",
    "table",
    "DiaForcedSource: PSF flux (nJy) of every DIAObject on a difference image.",
)
register_dataset_type(
    "diaMetrics",
    (),
    "validation/dia.json",
    "json",
    "Difference-imaging checks against the truth: noise, recovery, spurious, SN pulls.",
)

# --- validation and monitoring of the run (validate_run, monitor_lightcurves) ------------------
register_dataset_type(
    "validationMetrics",
    (),
    "../validation/metrics.json",
    "json",
    "Every metric of the run with its requirement and verdict (runs/<name>/validation/).",
)
register_dataset_type(
    "lightcurveMonitor",
    (),
    "../validation/monitor.json",
    "json",
    "The SN/SL monitor's selected objects: ids, kinds, bands, pulls of their light curves.",
)

# --- the catalog database (ingest_catalogs) ---------------------------------------------------
register_dataset_type(
    "catalogIngest",
    (),
    "catalogs/ingest.json",
    "json",
    "What the last ingest wrote: database (password hidden), rows per table, failures.",
)
