"""The run's validation metrics, each with its threshold and verdict: ``metrics.json``.

A :class:`Metric` is a measured value, its unit, the requirement it is held to (a threshold
and how it compares) and where that requirement comes from: the LSST Science Requirements
Document (LPM-17) design values where one applies (PA1 5 mmag, AM1 10 mas), otherwise the
tolerance derived from the noise that the pipeline's issues set (pulls 1 +- 0.1, ...).

A metric measured on a sample too small to settle it to its threshold carries its standard
error, and fails only where it is beyond the threshold by more than two of them: the median
pull of a band's supernova light curves is one (every point of a light curve shares the
template's noise at its position, so a dozen light curves set the median to +-0.1-0.2 sigma,
as large as the 0.1 sigma bias it is held to).

Its status is ``pass`` or ``fail``; ``not measured`` when the value could not be measured on
this run, with the reason in its ``note`` (AM1 needs star pairs 5' apart, more than a small
demo field holds; a run of external images without a truth catalog cannot score anything
against the truth); ``info`` for a number reported without a requirement (spurious
DIASources per visit).

:func:`collect_metrics` turns the static-sky and difference-imaging validation records
(``staticSkyMetrics``, ``diaMetrics``) and the run-level measurements of the ``validate_run``
recipe into the list written by :func:`write_metrics`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twinkles.bands import band_order
from twinkles.files import atomic_path

__all__ = [
    "SRD",
    "Metric",
    "collect_metrics",
    "read_metrics",
    "write_metrics",
]

#: Where the thresholds come from.
SRD = "LSST SRD design (LPM-17)"
ISSUE = "twinkles requirement (noise-derived)"
DC2_DIA = "DC2 y-band artifact rate before real/bogus (Sanchez et al. 2022)"
DC2_EFFICIENCY = "DC2 difference imaging: 50% efficiency at S/N 5.8 (Sanchez et al. 2022)"

_COMPARISONS = ("<=", ">=", "abs<=", "within")


@dataclass(frozen=True)
class Metric:
    """One measured quantity held to a requirement.

    Parameters
    ----------
    name : str
        Identifier, e.g. ``PA1_r`` (letters, digits, ``_`` and ``.``).
    value : float
        The measurement; NaN when it could not be measured.
    unit : str
        Its unit (``mmag``, ``mas``, ``""`` for a ratio).
    comparison : str or None
        ``<=``, ``>=``, ``abs<=`` (|value| <= threshold) or ``within`` (|value - 1| <=
        threshold); None for a number reported without a requirement.
    threshold : float or None
        The requirement's number.
    reference : str
        Where the requirement comes from.
    description : str
        What is measured, in a sentence.
    uncertainty : float or None
        The value's standard error where the sample limits it: the requirement then fails
        only when the value is beyond the threshold by more than ``2 * uncertainty``.
    note : str
        Why the metric could not be measured on this run (``no truth``, ...), if it could not.
    """

    name: str
    value: float
    unit: str
    comparison: str | None
    threshold: float | None
    reference: str
    description: str
    uncertainty: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.comparison is not None and self.comparison not in _COMPARISONS:
            raise ValueError(f"metric {self.name}: comparison must be one of {_COMPARISONS}")
        if (self.comparison is None) != (self.threshold is None):
            raise ValueError(f"metric {self.name}: give a comparison and a threshold, or neither")

    @property
    def status(self) -> str:
        """``pass``, ``fail``, ``not measured`` or ``info``."""
        if self.value is None or not math.isfinite(self.value):
            return "not measured"
        if self.comparison is None:
            return "info"
        v, t = float(self.value), float(self.threshold)
        allowance = 2.0 * float(self.uncertainty) if _finite(self.uncertainty) else 0.0
        ok = {
            "<=": v - allowance <= t,
            ">=": v + allowance >= t,
            "abs<=": abs(v) - allowance <= t,
            "within": abs(v - 1.0) - allowance <= t,
        }[self.comparison]
        return "pass" if ok else "fail"

    @property
    def verdict(self) -> str:
        """The status, with the reason when the metric was not measured."""
        if self.status == "not measured" and self.note:
            return f"not measured: {self.note}"
        return self.status

    @property
    def requirement(self) -> str:
        """The requirement in words, e.g. ``<= 5 mmag`` or ``1 +- 0.1``."""
        if self.comparison is None:
            return ""
        unit = f" {self.unit}" if self.unit else ""
        if self.comparison == "within":
            text = f"1 +- {self.threshold:g}"
        elif self.comparison == "abs<=":
            text = f"|x| <= {self.threshold:g}{unit}"
        else:
            text = f"{self.comparison} {self.threshold:g}{unit}"
        if _finite(self.uncertainty):
            text += f" (within 2 x its error {float(self.uncertainty):.2g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The metric as JSON-able values: non-finite values and uncertainties become None; status,
        verdict and requirement are added.
        """
        out = asdict(self)
        out["value"] = None if not _finite(self.value) else float(self.value)
        out["uncertainty"] = float(self.uncertainty) if _finite(self.uncertainty) else None
        out["status"] = self.status
        out["verdict"] = self.verdict
        out["requirement"] = self.requirement
        return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _get(record: dict, *keys: str, default: float = math.nan) -> float:
    for key in keys:
        if not isinstance(record, dict) or key not in record or record[key] is None:
            return default
        record = record[key]
    return float(record)


def _bin(record: dict, key: str) -> str:
    """An S/N bin of a record as words, e.g. ``S/N 100-300``."""
    lo, hi = record.get(key) or (math.nan, math.nan)
    if lo is None or not math.isfinite(lo):
        return "no bin"
    return f"S/N {lo:g}-{hi:g}" if hi is not None and math.isfinite(hi) else f"S/N > {lo:g}"


def collect_metrics(
    static_sky: dict,
    dia: dict,
    am1_mas: float,
    am1_pairs: int,
    dia_object_completeness: float,
    dia_object_purity: float,
    lensed_resolved: int = 0,
    lensed_detectable: int = 0,
    lensed_separate: int = 0,
    truth: bool = True,
    lensed_in_truth: bool = True,
    dia_object_purity_reliable: float = float("nan"),
) -> list[Metric]:
    """The run's metrics from its validation records and run-level measurements.

    Parameters
    ----------
    static_sky : dict
        The ``staticSkyMetrics`` record (validate_static_sky).
    dia : dict
        The ``diaMetrics`` record (validate_dia).
    am1_mas, am1_pairs : float, int
        AM1 and the number of star pairs it used (NaN and 0 when none qualified).
    dia_object_completeness, dia_object_purity : float
        Of DIAObjects against the variable truth (transients with peak S/N >= 10; DIAObjects
        of two or more DIASources).
    lensed_resolved, lensed_detectable, lensed_separate : int
        Lensed-quasar images >= 2 FWHM from the others of their system; of those, the ones
        whose variability reaches S/N 10 in a difference image; of those, the ones that are
        DIAObjects of their own (:func:`~twinkles.validation.dia.lensed_image_recovery`).
    truth : bool
        Whether the run has a truth: without one every metric scored against it is
        *not measured: no truth* (the SN pulls of each band included).
    lensed_in_truth : bool
        Whether the truth holds lensed quasars (an external truth catalog holds none).
    dia_object_purity_reliable : float
        ``dia_object_purity`` of the DIAObjects with two or more DIASources above the
        real/bogus cut.
    """
    forced = static_sky.get("forced", {})
    metrics = [
        *_forced_metrics(forced),
        *_pull_metrics(
            static_sky.get("src", {}),
            "src",
            "single-visit (src)",
            "its error bootstrapped over visits, with the zero points' shared error",
        ),
        *_pull_metrics(
            static_sky.get("object_photometry", {}),
            "object",
            "Object (coadd)",
            "its error with the zero points' shared error",
        ),
        *_calibration_and_coadd_metrics(static_sky, am1_mas, am1_pairs),
        *_object_metrics(static_sky.get("objects", {})),
        *_dia_metrics(dia, dia_object_completeness, dia_object_purity, dia_object_purity_reliable),
        *_supernova_metrics(dia),
        *_lensed_and_count_metrics(dia, lensed_resolved, lensed_detectable, lensed_separate),
    ]
    if not truth:
        metrics += _unmeasured_supernova_metrics(sorted(forced, key=band_order))
    return [_with_note(m, truth, lensed_in_truth, am1_pairs) for m in metrics]


def _forced_metrics(forced: dict) -> list[Metric]:
    """PA1, PF1 and the ForcedSource pulls and ramps of each band."""
    metrics: list[Metric] = []
    for band in sorted(forced, key=band_order):
        f = forced[band]
        n_pa1 = int(_get(f, "n_pa1_stars", default=0))
        faro_note = (
            ""
            if _finite(_get(f, "pa1_mmag"))
            else f"{n_pa1} stars of median S/N >= 200 in more than two visits (faro needs 50)"
        )
        metrics += [
            Metric(
                f"PA1_{band}",
                _get(f, "pa1_mmag"),
                "mmag",
                "<=",
                5.0,
                SRD,
                f"photometric repeatability (faro): median RMS over visits of non-variable "
                f"stars of median S/N >= 200, {band}",
                note=faro_note,
            ),
            Metric(
                f"PF1_{band}",
                _get(f, "pf1_percent"),
                "%",
                "<=",
                10.0,
                SRD,
                f"percentage of those stars' magnitudes more than PA2 = 15 mmag from their mean, "
                f"{band}",
                note=faro_note,
            ),
            Metric(
                f"expected_PA1_{band}",
                _get(f, "pa1_noise_mmag"),
                "mmag",
                None,
                None,
                ISSUE,
                f"the PA1 that the same stars' photometric errors alone give, {band}",
                note=faro_note,
            ),
            Metric(
                f"PA1_validate_drp_{band}",
                _get(f, "pa1_drp_mmag"),
                "mmag",
                None,
                None,
                ISSUE,
                f"validate_drp's PA1 (stars of median S/N >= 50, random pairs of visits; photon "
                f"noise alone gives {_get(f, 'pa1_drp_noise_mmag'):.1f} mmag), {band}",
                note=""
                if _finite(_get(f, "pa1_drp_mmag"))
                else f"{int(_get(f, 'n_drp_stars', default=0))} stars of median S/N >= 50 "
                "(needs 3)",
            ),
            Metric(
                f"photometric_floor_{band}",
                _get(f, "floor_mmag"),
                "mmag",
                "<=",
                5.0,
                SRD,
                "scatter of bright stars' ForcedSource magnitudes beyond their errors, all "
                f"visits: the systematic part of PA1, {band}",
            ),
            Metric(
                f"forced_pull_std_{band}",
                _get(f, "pull_std"),
                "",
                "within",
                0.1,
                ISSUE,
                f"robust std of (ForcedSource flux - true) / error, stars S/N >= 10, {band}",
            ),
            Metric(
                f"forced_pull_std_by_snr_{band}",
                _get(f, "pull_std_worst"),
                "",
                "within",
                0.1,
                ISSUE,
                "robust std of ForcedSource pulls in the S/N bin (5-30, 30-100, 100-300, "
                f">300) where it is furthest from 1: {_bin(f, 'pull_std_worst_bin')}, {band}",
                uncertainty=_get(f, "pull_std_worst_err"),
            ),
            Metric(
                f"forced_pull_median_by_snr_{band}",
                _get(f, "pull_median_worst"),
                "",
                "abs<=",
                0.1,
                ISSUE,
                "median ForcedSource pull in the S/N bin where it is furthest from 0: "
                f"{_bin(f, 'pull_median_worst_bin')}, {band} (its error bootstrapped over "
                "visits, with the zero points' shared error)",
                uncertainty=_get(f, "pull_median_worst_err"),
            ),
            Metric(
                f"flux_ramp_linear_{band}",
                _get(f, "ramp_linear_mmag"),
                "mmag",
                "<=",
                1.0,
                ISSUE,
                "RMS over visits, beyond its noise, of the linear ramp of bright stars' "
                f"ForcedSource flux / true flux from the sensor's centre to a corner, {band}",
                uncertainty=_get(f, "ramp_linear_err_mmag"),
            ),
            Metric(
                f"flux_ramp_radial_{band}",
                _get(f, "ramp_radial_mmag"),
                "mmag",
                "<=",
                1.0,
                ISSUE,
                "the same for a radial ramp (centre to corner), which repeats from visit to "
                f"visit and PA1 cannot see, {band}",
                uncertainty=_get(f, "ramp_radial_err_mmag"),
            ),
            Metric(
                f"forced_bias_{band}",
                100.0 * _get(f, "bias"),
                "%",
                "abs<=",
                0.5,
                ISSUE,
                f"median ForcedSource flux / true flux - 1 of bright stars, {band}",
            ),
        ]
    return metrics


def _pull_metrics(records: dict, prefix: str, what: str, median_error: str) -> list[Metric]:
    """PSF-flux pulls against the truth of each band (:func:`photometry_systematics`'s
    worst bins): ``<prefix>_pull_std_by_snr_<band>`` and ``<prefix>_pull_median_by_snr_<band>``
    of ``what``, the median's error being ``median_error``."""
    metrics: list[Metric] = []
    for band in sorted(records, key=band_order):
        f = records[band]
        metrics += [
            Metric(
                f"{prefix}_pull_std_by_snr_{band}",
                _get(f, "pull_std_worst"),
                "",
                "within",
                0.1,
                ISSUE,
                f"robust std of {what} PSF-flux pulls against the truth in the S/N bin where "
                f"it is furthest from 1: {_bin(f, 'pull_std_worst_bin')}, {band}",
                uncertainty=_get(f, "pull_std_worst_err"),
            ),
            Metric(
                f"{prefix}_pull_median_by_snr_{band}",
                _get(f, "pull_median_worst"),
                "",
                "abs<=",
                0.1,
                ISSUE,
                f"median {what} PSF-flux pull in the S/N bin where it is furthest from 0: "
                f"{_bin(f, 'pull_median_worst_bin')}, {band} ({median_error})",
                uncertainty=_get(f, "pull_median_worst_err"),
            ),
        ]
    return metrics


def _calibration_and_coadd_metrics(
    static_sky: dict, am1_mas: float, am1_pairs: int
) -> list[Metric]:
    """Zero points against the truth, AM1 and the coadds' noise."""
    metrics: list[Metric] = []
    zero_points = static_sky.get("zero_points") or {}
    metrics += [
        Metric(
            "zero_point_offset_rms",
            _get(zero_points, "rms_mmag"),
            "mmag",
            "<=",
            5.0,
            ISSUE,
            "RMS over visits of the measured zero point minus the simulated one",
        ),
        Metric(
            "zero_point_pull_std",
            _get(zero_points, "pull_std"),
            "",
            "within",
            0.2,
            ISSUE,
            "std over visits of (measured - simulated zero point) / its reported error",
        ),
    ]
    metrics.append(
        Metric(
            "AM1",
            am1_mas,
            "mas",
            "<=",
            10.0,
            SRD,
            f"astrometric repeatability of star pairs 5' +- 1' apart ({am1_pairs} pairs)",
        )
    )
    for band, c in sorted(static_sky.get("coadds", {}).items(), key=lambda b: band_order(b[0])):
        metrics.append(
            Metric(
                f"coadd_noise_ratio_{band}",
                _get(c, "noise_ratio"),
                "",
                "within",
                0.1,
                ISSUE,
                f"measured coadd pixel noise over the inputs' predicted noise, {band}",
            )
        )
    return metrics


def _object_metrics(objects: dict) -> list[Metric]:
    """Objects against the truth: completeness, purity and point-source positions."""
    return [
        Metric(
            "object_completeness",
            _get(objects, "completeness_1mag_above_depth"),
            "",
            ">=",
            0.95,
            ISSUE,
            'true stars and galaxies with an Object within 1", 1 mag above the coadd depth',
        ),
        Metric(
            "object_purity",
            _get(objects, "purity_1mag_above_depth"),
            "",
            ">=",
            0.95,
            ISSUE,
            'Objects within 1" of a true object, 1 mag above the coadd depth',
        ),
        Metric(
            "object_position_offset",
            _get(objects, "point_source_offset_median_mas"),
            "mas",
            "<=",
            10.0,
            ISSUE,
            "median offset of point-source Objects from their true positions",
        ),
    ]


def _dia_metrics(
    dia: dict,
    dia_object_completeness: float,
    dia_object_purity: float,
    dia_object_purity_reliable: float,
) -> list[Metric]:
    """The difference images' noise, DIASources against the truth (recovery, artifacts,
    injections) and DIAObjects."""
    # the injections' efficiency over all bands (validate_dia's "all" row; none if no injection)
    injection_all = next((r for r in dia.get("injection") or [] if r.get("band") == "all"), {})
    return [
        Metric(
            "difference_noise_ratio_min",
            _get(dia, "noise_ratio_min"),
            "",
            "within",
            0.1,
            ISSUE,
            "worst visit: robust std of difference / sigma away from variable objects",
        ),
        Metric(
            "difference_noise_ratio_max",
            _get(dia, "noise_ratio_max"),
            "",
            "within",
            0.1,
            ISSUE,
            "best visit the other way: the largest robust std of difference / sigma",
        ),
        Metric(
            "transient_recovery",
            _get(dia, "recovery"),
            "",
            ">=",
            0.95,
            ISSUE,
            "transients with expected S/N >= 10 in a difference image that have a DIASource",
        ),
        Metric(
            "spurious_dia_sources_per_visit",
            _get(dia, "spurious_per_visit_mean"),
            "",
            None,
            None,
            ISSUE,
            'mean number of DIASources per visit more than 1" from any variable object',
        ),
        Metric(
            "dia_artifacts_per_deg2_per_visit",
            _get(dia, "artifacts_per_deg2_per_visit"),
            "",
            "<=",
            300.0,
            DC2_DIA,
            "spurious DIASources per deg2 per visit, before any real/bogus cut (by cause in "
            "validate_dia)",
        ),
        Metric(
            "dia_artifacts_per_deg2_per_visit_reliable",
            _get(dia, "artifacts_per_deg2_per_visit_reliable"),
            "",
            "<=",
            50.0,
            ISSUE,
            "spurious DIASources per deg2 per visit at least min_reliability reliable",
        ),
        Metric(
            "transient_recovery_reliable",
            _get(dia, "recovery_reliable"),
            "",
            ">=",
            0.95,
            ISSUE,
            "transients with expected S/N >= 10 found by a DIASource above the real/bogus cut",
        ),
        Metric(
            "dia_injection_snr50",
            _get(injection_all, "snr50"),
            "",
            None,
            None,
            DC2_EFFICIENCY,
            "S/N on the difference image at which half the injected point sources are found",
        ),
        Metric(
            "dia_injection_efficiency_snr10_reliable",
            _get(injection_all, "efficiency_bright_reliable"),
            "",
            ">=",
            0.95,
            ISSUE,
            "injected point sources of S/N >= 10 found by a DIASource above the real/bogus cut",
        ),
        Metric(
            "dia_object_completeness",
            dia_object_completeness,
            "",
            ">=",
            0.95,
            ISSUE,
            'variable objects with peak difference S/N >= 10 that have a DIAObject within 1"',
        ),
        Metric(
            "dia_object_purity",
            dia_object_purity,
            "",
            None,
            None,
            ISSUE,
            'DIAObjects of two or more DIASources within 1" of a variable object',
        ),
        Metric(
            "dia_object_purity_reliable",
            dia_object_purity_reliable,
            "",
            ">=",
            0.90,
            ISSUE,
            'DIAObjects of two or more reliable DIASources within 1" of a variable object',
        ),
    ]


def _supernova_metrics(dia: dict) -> list[Metric]:
    """Supernova light-curve pulls of each band, all hosts and bright ones."""
    metrics: list[Metric] = []
    for entry in sorted(dia.get("sn_pulls", []), key=lambda e: band_order(e["band"])):
        band = entry["band"]
        bright = f"r < {entry['bright_host_mag']:g}" if "bright_host_mag" in entry else "bright"
        metrics += [
            Metric(
                f"sn_pull_std_{band}",
                _get(entry, "pull_std"),
                "",
                "within",
                0.15,
                ISSUE,
                f"robust std of SN DiaForcedSource pulls against the truth, {band} (its error: a "
                "bootstrap over light curves)",
                _get(entry, "pull_std_err"),
            ),
            Metric(
                f"sn_pull_median_{band}",
                _get(entry, "pull_median"),
                "sigma",
                "abs<=",
                0.1,
                ISSUE,
                f"median SN DiaForcedSource pull, {band} (its error: a bootstrap over light "
                "curves)",
                _get(entry, "pull_median_err"),
            ),
            Metric(
                f"sn_bright_host_pull_std_{band}",
                _get(entry, "bright_host_pull_std"),
                "",
                "within",
                0.15,
                ISSUE,
                f"robust std of the pulls of SNe on hosts {bright}, {band} (its error: a "
                "bootstrap over light curves)",
                _get(entry, "bright_host_pull_std_err"),
            ),
            Metric(
                f"sn_bright_host_pull_median_{band}",
                _get(entry, "bright_host_pull_median"),
                "sigma",
                "abs<=",
                0.1,
                ISSUE,
                f"median pull of SNe on hosts {bright}, {band} (its error: a bootstrap over "
                "light curves)",
                _get(entry, "bright_host_pull_median_err"),
            ),
        ]
    return metrics


def _lensed_and_count_metrics(
    dia: dict, lensed_resolved: int, lensed_detectable: int, lensed_separate: int
) -> list[Metric]:
    """Lensed-quasar images as DIAObjects of their own, and DIASources per visit."""
    return [
        Metric(
            "lensed_image_recovery",
            lensed_separate / lensed_detectable if lensed_detectable else math.nan,
            "",
            ">=",
            1.0,
            ISSUE,
            "lensed-quasar images >= 2 FWHM apart and varying at peak S/N >= 10 that are "
            f"DIAObjects of their own ({lensed_detectable} images)",
        ),
        Metric(
            "lensed_images_resolved",
            float(lensed_resolved),
            "",
            None,
            None,
            ISSUE,
            "lensed-quasar images >= 2 FWHM from the other images of their system, faint or not",
        ),
        Metric(
            "dia_sources_per_visit",
            _get(dia, "dia_sources_per_visit_mean"),
            "",
            None,
            None,
            ISSUE,
            "mean number of DIASources per difference image",
        ),
    ]


def _unmeasured_supernova_metrics(bands: list[str]) -> list[Metric]:
    """The SN pull metrics of each band, not measured (a run without a truth)."""
    return [
        Metric(name, math.nan, "", comparison, threshold, ISSUE, description)
        for band in bands
        for name, comparison, threshold, description in (
            (f"sn_pull_std_{band}", "within", 0.15, f"robust std of SN pulls, {band}"),
            (f"sn_pull_median_{band}", "abs<=", 0.1, f"median SN pull, {band}"),
        )
    ]


#: Measurements a bin of pulls by S/N needs to be judged (fewer: the bin is not scored).
MIN_PULLS_PER_BIN = 20

#: Metrics scored against the truth (by name prefix).
_NEEDS_TRUTH = (
    "forced_pull_",
    "flux_ramp_",
    "forced_bias_",
    "object_",
    "transient_recovery",
    "spurious_dia_sources",
    "dia_artifacts_",
    "dia_object_",
    "sn_",
    "lensed_",
)


def _with_note(metric: Metric, truth: bool, lensed_in_truth: bool, am1_pairs: int) -> Metric:
    """The metric with the reason it was not measured, where it was not."""
    if _finite(metric.value) or metric.note:
        return metric
    if not truth and metric.name.startswith(_NEEDS_TRUTH):
        note = "no truth"
    elif metric.name.startswith("dia_injection_"):
        note = "the run injected no sources (injection.enabled: false)"
    elif "_pull_" in metric.name and "_by_snr_" in metric.name:
        note = f"no S/N bin holds {MIN_PULLS_PER_BIN} measurements"
    elif metric.name.startswith("zero_point_"):
        note = "no simulated zero points (external images)"
    elif metric.name == "AM1":
        note = f"{am1_pairs} star pairs 5' +- 1' apart: the field is too small"
    elif metric.name.startswith("sn_bright_host_"):
        note = "no supernova on a bright host"
    elif metric.name.startswith("lensed_"):
        note = (
            "no lensed quasar varies at S/N >= 10"
            if lensed_in_truth
            else "no lensed quasar in the truth"
        )
    else:
        return metric
    return replace(metric, note=note)


def write_metrics(path: str | Path, run: str, metrics: list[Metric]) -> dict[str, Any]:
    """Write ``metrics.json`` atomically; returns what was written."""
    names = [m.name for m in metrics]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"duplicate metric names: {', '.join(duplicated)}")
    records = [m.to_dict() for m in metrics]
    summary = {s: 0 for s in ("pass", "fail", "not measured", "info")}
    for r in records:
        summary[r["status"]] += 1
    out = {"run": run, "summary": summary, "metrics": records}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    return out


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json``, with ``by_name`` (metric name -> record) added."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no validation metrics; run the validate_run step first")
    data = json.loads(path.read_text())
    data["by_name"] = {m["name"]: m for m in data["metrics"]}
    return data
