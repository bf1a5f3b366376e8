"""Run configuration: ``runs/<name>.yaml``, validated.

A run is described by one YAML file. Every section below is a configured object in the style of
LSST pipe_tasks: each field has a default, a unit and a doc string (``twinkles config show``
prints them). Unknown keys, wrong types and impossible values are refused with one message
that names every offending key, e.g. ``cadence.n_visits: must be greater than 0 (got -3)``.

The run's outputs go to the directory next to the file, with the file's stem as its name:
``runs/tiny.yaml`` writes ``runs/tiny/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from twinkles.bands import BANDS, Band
from twinkles.butler import Butler
from twinkles.errors import TwinklesError
from twinkles.image.compression import ImageCompression
from twinkles.section import Section

__all__ = [
    "RUN1_FILTER_COUNTS",
    "CadenceConfig",
    "ConfigError",
    "DatabaseConfig",
    "ExecutorConfig",
    "FieldConfig",
    "InjectionConfig",
    "InputsConfig",
    "ReferenceCatalogConfig",
    "RenderConfig",
    "Run",
    "RunConfig",
    "SensorConfig",
    "StepConfig",
    "TruthConfig",
    "load_run",
    "load_run_config",
]


#: Visits per filter in Twinkles Run 1 (1227 visits over 10 years).
RUN1_FILTER_COUNTS: dict[str, int] = {"u": 254, "g": 195, "r": 196, "i": 195, "z": 195, "y": 192}


class ConfigError(TwinklesError, ValueError):
    """A run configuration that cannot be used; ``problems`` lists each offending key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not a valid run configuration:\n{lines}")


class FieldConfig(Section):
    """The pointing: one LSST sensor in a deep-drilling field."""

    ra: float = Field(
        53.01, ge=0.0, lt=360.0, description="Field centre right ascension (deg, ICRS); CDFS DDF."
    )
    dec: float = Field(-27.44, ge=-90.0, le=90.0, description="Field centre declination (deg).")


class SensorConfig(Section):
    """The detector: size, pixels, full well and exposure (an LSST R22_S11 eimage by default)."""

    width_px: int = Field(4000, ge=32, le=20000, description="Sensor width, x (pixels).")
    height_px: int = Field(4072, ge=32, le=20000, description="Sensor height, y (pixels).")
    pixel_scale: float = Field(0.2, gt=0.0, le=2.0, description="Pixel scale (arcsec/pixel).")
    pixel_size_um: float = Field(
        10.0, gt=0.0, description="Physical pixel size (micron); sets the cosmic-ray rate per area."
    )
    saturation: float = Field(
        100000.0, gt=0.0, description="Full well (electrons); excess charge bleeds along columns."
    )
    exposure_time: float = Field(30.0, gt=0.0, description="Exposure time of a visit (s).")


class CadenceConfig(Section):
    """The OpSim stand-in: which nights and filters are observed, and in what conditions."""

    start_mjd: float = Field(
        59853.0, description="MJD (UTC) of the first night; 59853 is 2022-10-01, as minion_1016."
    )
    n_years: int = Field(10, ge=1, le=20, description="Survey length (years).")
    n_visits: int = Field(1227, ge=1, description="Number of visits over the survey.")
    filters: list[Band] = Field(
        default_factory=lambda: list(BANDS), description="Filters observed (subset of ugrizy)."
    )
    filter_weights: dict[Band, float] | None = Field(
        None,
        description="Relative number of visits per filter; default: the Run-1 proportions "
        "(u 254, g 195, r 196, i 195, z 195, y 192).",
    )
    weather_loss: float = Field(
        0.25, ge=0.0, lt=1.0, description="Fraction of nights lost to weather."
    )
    max_airmass: float = Field(
        1.5, ge=1.01, le=3.0, description="Highest airmass at which the field is observed."
    )
    min_window_hours: float = Field(
        2.5,
        ge=0.0,
        le=12.0,
        description="A night counts towards the observing season when the field stays below "
        "max_airmass for at least this long (h).",
    )
    seeing_median: float = Field(
        0.66,
        gt=0.2,
        le=2.0,
        description="Median atmospheric FWHM at 500 nm, zenith (arcsec); gives the Run-1 "
        "median FWHMeff of 0.87 arcsec.",
    )
    seeing_log_sigma: float = Field(
        0.25, ge=0.0, le=1.0, description="Scatter of ln(atmospheric seeing) between nights."
    )
    fwhm_eff_min: float = Field(0.6, gt=0.1, description="Smallest FWHMeff kept (arcsec).")
    fwhm_eff_max: float = Field(1.6, gt=0.1, description="Largest FWHMeff kept (arcsec).")

    @model_validator(mode="after")
    def _check(self) -> CadenceConfig:
        problems = []
        if not self.filters:
            problems.append("filters: at least one filter is needed")
        if len(set(self.filters)) != len(self.filters):
            problems.append(f"filters: repeated filter in {self.filters}")
        if self.filter_weights is not None:
            extra = sorted(set(self.filter_weights) - set(self.filters))
            if extra:
                problems.append(f"filter_weights: filters {extra} are not in filters")
            if any(w <= 0 for w in self.filter_weights.values()):
                problems.append("filter_weights: weights must be positive")
        if self.fwhm_eff_min >= self.fwhm_eff_max:
            problems.append("fwhm_eff_min: must be below fwhm_eff_max")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def weights(self) -> dict[str, float]:
        """Relative visit weight of each observed filter."""
        if self.filter_weights is not None:
            return {f: float(self.filter_weights.get(f, 0.0)) for f in self.filters}
        return {f: float(RUN1_FILTER_COUNTS[f]) for f in self.filters}


class TruthConfig(Section):
    """What is in the sky (the CatSim stand-in). Densities are per square degree."""

    star_density: float = Field(
        2.0e4, ge=0.0, description="Stars per deg^2 with r between star_mag_min and star_mag_max."
    )
    star_mag_min: float = Field(
        16.0, description="Brightest star, r (AB mag); Twinkles left out r < 16."
    )
    star_mag_max: float = Field(26.0, description="Faintest star, r (AB mag).")
    star_count_slope: float = Field(
        0.15, ge=0.0, le=1.0, description="Star counts dlog10N/dm (high galactic latitude)."
    )
    bright_star_density: float = Field(
        0.0,
        ge=0.0,
        description="Extra stars per deg^2, uniform in r from bright_star_mag_min to _max: a boost "
        "of the bright end (as the SN rate is boosted), so that a small field has the 50 "
        "stars of S/N >= 200 per band that PA1 (lsst/faro) needs.",
    )
    bright_star_mag_min: float = Field(17.0, description="Brightest extra bright star, r (AB mag).")
    bright_star_mag_max: float = Field(19.0, description="Faintest extra bright star, r (AB mag).")
    variable_star_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Fraction of stars that are periodic variables."
    )
    galaxy_density: float = Field(
        2.0e5, ge=0.0, description="Galaxies per deg^2 with r in [galaxy_mag_min, galaxy_mag_max]."
    )
    galaxy_mag_min: float = Field(17.0, description="Brightest galaxy, r (AB mag).")
    galaxy_mag_max: float = Field(26.5, description="Faintest galaxy, r (AB mag).")
    galaxy_count_slope: float = Field(0.38, ge=0.0, le=1.0, description="Galaxy counts dlog10N/dm.")
    n_supernovae: int = Field(
        500, ge=0, description="SNe Ia in host galaxies, peaks spread over the observed seasons."
    )
    sn_max_redshift: float = Field(
        1.0, gt=0.0, le=2.0, description="Hosts of SNe are galaxies with redshift below this."
    )
    n_lensed_quasars: int = Field(20, ge=0, description="Strongly lensed quasar systems.")
    lens_theta_e_min: float = Field(
        0.5, gt=0.0, description="Smallest Einstein radius of a lens (arcsec)."
    )
    lens_theta_e_max: float = Field(
        1.8, gt=0.0, description="Largest Einstein radius of a lens (arcsec)."
    )
    quasar_mag_min: float = Field(20.5, description="Brightest unlensed quasar, i (AB mag).")
    quasar_mag_max: float = Field(22.5, description="Faintest unlensed quasar, i (AB mag).")

    @model_validator(mode="after")
    def _check(self) -> TruthConfig:
        problems = []
        for lo, hi in [
            ("star_mag_min", "star_mag_max"),
            ("galaxy_mag_min", "galaxy_mag_max"),
            ("lens_theta_e_min", "lens_theta_e_max"),
            ("quasar_mag_min", "quasar_mag_max"),
        ]:
            if getattr(self, lo) > getattr(self, hi):
                problems.append(f"{lo}: must not exceed {hi}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ReferenceCatalogConfig(Section):
    """The external reference catalog used by astrometric and photometric calibration."""

    mag_limit: float = Field(22.0, description="Faintest star in the catalog, r (AB mag).")
    position_error_floor_mas: float = Field(
        2.0, ge=0.0, description="Position error of bright stars (mas, per coordinate)."
    )
    position_error_at_limit_mas: float = Field(
        15.0, ge=0.0, description="Position error at mag_limit (mas, per coordinate)."
    )
    photometric_floor_mag: float = Field(
        0.005, ge=0.0, description="Magnitude error of bright stars (mag)."
    )
    depth_mag: float = Field(
        24.5, description="5-sigma depth of the survey the catalog comes from (AB mag)."
    )
    resolved_mag_limit: float = Field(
        20.0, description="Galaxies brighter than this (r) are included, flagged resolved."
    )


class RenderConfig(Section):
    """How a visit is drawn into an eimage (the PhoSim stand-in)."""

    psf_profile: Literal[
        "moffat", "kolmogorov", "kolmogorov_optics", "double_gaussian", "mixed"
    ] = Field(
        "moffat",
        description="PSF profile. moffat: beta = moffat_beta, truncated at 5 FWHM so every "
        "stamp holds the whole flux; kolmogorov: pure atmospheric turbulence (heavy wings); "
        "kolmogorov_optics: turbulence convolved with a Gaussian optics term of 0.4 of its "
        "width; double_gaussian: a core and 10% of the light in a Gaussian twice as wide; "
        "mixed: each visit draws one of moffat (beta in moffat_beta_min..max), "
        "kolmogorov_optics and double_gaussian.",
    )
    moffat_beta: float = Field(
        4.765, gt=1.5, le=20.0, description="Moffat beta; 4.765 fits turbulence (Trujillo 2001)."
    )
    mixed_profiles: list[
        Literal["moffat", "kolmogorov", "kolmogorov_optics", "double_gaussian"]
    ] = Field(
        ["moffat", "kolmogorov_optics", "double_gaussian"],
        min_length=1,
        description="The profiles each visit of a mixed-profile run is drawn from.",
    )
    moffat_beta_min: float = Field(
        2.5, gt=1.5, le=20.0, description="Smallest Moffat beta of a mixed-profile visit."
    )
    moffat_beta_max: float = Field(
        4.5, gt=1.5, le=20.0, description="Largest Moffat beta of a mixed-profile visit."
    )
    psf_ellipticity: float = Field(
        0.02, ge=0.0, lt=0.3, description="Rms PSF ellipticity per component at the centre."
    )
    psf_variation: float = Field(
        0.02,
        ge=0.0,
        lt=0.3,
        description="Fractional change of the PSF FWHM from the centre to the sensor corner "
        "(with psf_variation_min below it, each visit draws its own between the two).",
    )
    psf_variation_min: float | None = Field(
        None,
        ge=0.0,
        lt=0.3,
        description="Smallest such change of a visit; none: every visit has psf_variation.",
    )
    psf_pattern: Literal["linear", "radial", "mixed"] = Field(
        "linear",
        description="How the FWHM changes over the sensor: linear, along a random direction; "
        "radial, with the square of the distance from the centre (as a focal plane's PSF "
        "broadens outwards); mixed: each visit one or the other at random.",
    )
    sky_gradient: float = Field(
        0.01, ge=0.0, lt=0.5, description="Fractional change of the sky level across the sensor."
    )
    airglow_sigma: float = Field(
        0.08, ge=0.0, le=1.0, description="Visit-to-visit scatter of the dark sky (mag)."
    )
    cloud_extinction_mean: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Mean grey cloud extinction (mag), exponentially distributed per visit.",
    )
    cosmic_ray_rate: float = Field(
        1.0, ge=0.0, description="Cosmic-ray hits per cm^2 of sensor per minute of exposure."
    )
    pointing_error_arcsec: float = Field(
        3.0, ge=0.0, le=60.0, description="Rms error of the nominal pointing, per axis (arcsec)."
    )
    rotation_error_deg: float = Field(
        0.05, ge=0.0, le=5.0, description="Rms error of the nominal rotation (deg)."
    )
    distortion_arcsec: float = Field(
        0.1, ge=0.0, le=10.0, description="Radial optical distortion at the sensor corner (arcsec)."
    )

    @model_validator(mode="after")
    def _check(self) -> RenderConfig:
        problems = []
        if self.moffat_beta_min > self.moffat_beta_max:
            problems.append("moffat_beta_min: must not exceed moffat_beta_max")
        if self.psf_variation_min is not None and self.psf_variation_min > self.psf_variation:
            problems.append("psf_variation_min: must not exceed psf_variation")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ExecutorConfig(Section):
    """Where and how the recipes are executed (``twinkles run``)."""

    kind: Literal["local", "slurm"] = Field(
        "local", description="local: worker processes on this machine; slurm: job arrays."
    )
    workers: int | None = Field(
        None, ge=1, description="local: tasks run at once (default: the CPUs available)."
    )
    ids_per_task: int = Field(
        8,
        ge=1,
        description="Most data ids one task runs in sequence in one warm kernel; tasks share "
        "the start-up cost among their data ids.",
    )
    kernel: Literal["warm", "fresh"] = Field(
        "warm",
        description="warm: one kernel per task, science stack imported once, namespace reset "
        "between data ids; fresh: a new kernel per data id (papermill's default).",
    )
    max_retries: int = Field(
        2, ge=0, le=10, description="Retries of a data id after an infrastructure failure."
    )
    retry_science_failures: bool = Field(
        False, description="Also retry data ids whose recipe raised (normally pointless)."
    )
    figure_every: int = Field(
        1,
        ge=1,
        description="Per-visit recipes draw their figures for every n-th visit (in visit "
        "order, the first included) and run with figures=False for the others: drawing is ~40% "
        "of a visit's time, and a sweep over thousands of visits needs a sample to look at, not "
        "every one. 1: every visit. A step's own `figures` parameter overrides it.",
    )
    poll_seconds: float = Field(1.0, gt=0.0, le=60.0, description="Status polling interval (s).")
    slurm_partition: str | None = Field(None, description="Slurm partition (default: the default).")
    slurm_array_parallelism: int = Field(
        256, ge=1, description="Most array tasks of one step running at once on Slurm."
    )
    memory_growth_on_retry: float = Field(
        2.0, ge=1.0, le=8.0, description="Slurm: memory request multiplier for each retry."
    )


class InjectionConfig(Section):
    """Source injection: point sources of known flux put into each calexp before a second
    subtraction (the ``inject_sources`` step), to measure the difference imaging's efficiency
    (LSST's source_injection; the fakes of DES, Kessler et al. 2015)."""

    enabled: bool = Field(
        False, description="Run the inject_sources step (it costs one more subtraction per visit)."
    )
    n_per_visit: int = Field(40, ge=1, le=10_000, description="Point sources injected per visit.")
    snr_min: float = Field(
        2.0,
        gt=0.0,
        description="Least S/N of an injection on the calexp alone (log-uniform draws).",
    )
    snr_max: float = Field(
        40.0, gt=0.0, description="Greatest S/N of an injection on the calexp alone."
    )
    galaxy_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Fraction placed on galaxies of the Object table (where supernovae are, "
        "and where subtraction residuals are), the rest uniformly over the sensor.",
    )
    galaxy_mag_max: float = Field(
        23.0, description="Host galaxies are extended Objects brighter than this (AB, aperture)."
    )
    galaxy_offset_arcsec: float = Field(
        1.0, ge=0.0, description="An injection on a galaxy lies at most this far from its centre."
    )
    margin_px: int = Field(
        16,
        ge=0,
        description="No injection closer than this to the sensor's edge (pixels): the "
        "difference has no data within the matching kernel's half width of it.",
    )
    min_separation_arcsec: float = Field(
        3.0,
        ge=0.0,
        description="No two injections closer than this (arcsec): injections that blend with "
        "each other are missed for that, which no real transient field shows.",
    )
    match_arcsec: float = Field(
        1.0, gt=0.0, description="An injection is found by a positive DIASource this close."
    )

    @model_validator(mode="after")
    def _check_range(self) -> InjectionConfig:
        if self.snr_max <= self.snr_min:
            raise ValueError(f"snr_max: must exceed snr_min ({self.snr_min:g})")
        return self


class StorageConfig(Section):
    """How the run's images are kept on disk (twinkles.image.compression), and which
    intermediates are removed once every step that reads them is done."""

    compression: Literal["quantized", "lossless", "none"] = Field(
        "quantized",
        description="Images (calexps, warps, coadds, templates, differences, simulated "
        "eimages) as tile-compressed FITS. quantized: float planes rounded, with a subtractive "
        "dither, to a step below their noise (adds image_step**2/12 of the sky variance), "
        "masks lossless; lossless: bit for bit (slow, ~10% smaller for noisy images); none: "
        "plain FITS.",
    )
    image_step: float = Field(
        1.0 / 16.0,
        gt=0.0,
        le=1.0,
        description="Quantisation step of image planes, as a fraction of the sky noise.",
    )
    variance_step: float = Field(
        1e-3,
        gt=0.0,
        le=1.0,
        description="Quantisation step of variance planes, as a fraction of their median.",
    )
    ephemeral: list[str] = Field(
        default_factory=lambda: ["deepCoadd_directWarp"],
        description="Dataset types removed once every step that reads them is done (rebuilt "
        "if one must run again): by default the warps, once their filter's coadd and template "
        "are done. Add eimage to remove a simulated run's eimages once processed (the "
        "simulation renders them again, bit for bit); an external run's eimages are its "
        "inputs and are always kept.",
    )

    def ephemeral_datasets(self, external: bool) -> frozenset[str]:
        """Dataset types removed once every step that reads them is done."""
        return frozenset(self.ephemeral) - ({"eimage"} if external else set())


class StepConfig(Section):
    """Overrides for one pipeline step: recipe parameters and resources."""

    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Recipe parameters (checked against the recipe)."
    )
    cpus: int | None = Field(None, ge=1, le=256, description="CPUs per task.")
    mem_gb: float | None = Field(None, gt=0.0, description="Memory per task (GB).")
    timeout_min: float | None = Field(
        None, gt=0.0, description="Wall-time limit of one data id (minutes)."
    )


class InputsConfig(Section):
    """Where the run's sky comes from: the built-in simulator, or images from elsewhere.

    An external run brings eimages (``docs/eimage-format.md``) from any simulator, a reference
    catalog (``docs/refcat-format.md``) and optionally a truth catalog
    (``docs/truth-format.md``); paths are relative to the run configuration's folder. The
    images are checked and linked (or copied) into the repository, never written to.
    """

    source: Literal["simulate", "external"] = Field(
        "simulate",
        description="simulate: the built-in simulator (the field, cadence, truth, refcat and "
        "render sections); external: the files below.",
    )
    eimages: list[str] = Field(
        default_factory=list,
        description="external: directories (their *.fits, *.fits.gz) or glob patterns of the "
        "eimages.",
    )
    link: Literal["symlink", "copy", "hardlink"] = Field(
        "symlink",
        description="external: how an eimage enters the repository: a symbolic link to it, a "
        "copy, or a hard link (same file system).",
    )
    refcat: str | None = Field(
        None, description="external: the reference catalog (FITS or Parquet)."
    )
    refcat_columns: dict[str, str] = Field(
        default_factory=dict,
        description="external: reference-catalog columns named otherwise, canonical: theirs "
        '("{band}" stands for each band, e.g. {band}_mag: mag_{band}).',
    )
    truth_objects: str | None = Field(
        None, description="external, optional: the truth catalog's objects (FITS or Parquet)."
    )
    truth_light_curves: str | None = Field(
        None,
        description="external, optional: the truth's light curves (id, mjd, band, flux nJy).",
    )
    truth_columns: dict[str, str] = Field(
        default_factory=dict,
        description="external: truth-object columns named otherwise, canonical: theirs.",
    )
    site_longitude: float = Field(
        -70.7494,
        ge=-180.0,
        le=180.0,
        description="external: longitude of the observatory (deg, East positive; Cerro "
        "Pachon): a night runs from local noon to noon.",
    )
    survey_start_mjd: float | None = Field(
        None,
        description="external: MJD of the survey's first night (seasons and data-release "
        "years count from it); default: the night of the first eimage.",
    )

    @model_validator(mode="after")
    def _check(self) -> InputsConfig:
        problems = []
        external = self.source == "external"
        if external and not self.eimages:
            problems.append("eimages: an external run needs its eimages (directories or globs)")
        if external and not self.refcat:
            problems.append("refcat: an external run needs a reference catalog")
        if not external:
            given = [
                k
                for k in ("eimages", "refcat", "truth_objects", "truth_light_curves")
                if getattr(self, k)
            ]
            given += [k for k in ("refcat_columns", "truth_columns") if getattr(self, k)]
            problems += [f"{k}: only for source: external" for k in given]
        if self.truth_light_curves and not self.truth_objects:
            problems.append("truth_light_curves: needs truth_objects")
        if problems:
            raise ValueError("; ".join(problems))
        return self


#: SQLAlchemy URLs of the supported dialects (SQLite, PostgreSQL, MySQL/MariaDB).
_DATABASE_URL = re.compile(r"^(sqlite|postgresql|mysql|mariadb)(\+[A-Za-z0-9_]+)?://")


class DatabaseConfig(Section):
    """The catalog database."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL (postgresql+psycopg://..., mysql+pymysql://...); default: "
        "SQLite at runs/<name>/catalogs.db.",
    )

    @model_validator(mode="after")
    def _check(self) -> DatabaseConfig:
        if self.url is not None and not re.match(_DATABASE_URL, self.url):
            raise ValueError(
                f"url: {self.url!r} is not a database URL twinkles can ingest into "
                f"(sqlite:///path, postgresql+psycopg://user@host:port/db, "
                f"mysql+pymysql://user@host/db)"
            )
        return self


class RunConfig(Section):
    """One run: the simulated field and everything needed to process it."""

    name: str = Field(description="Run name; defaults to the file's stem.")
    seed: int = Field(1, ge=0, description="Seed of every random draw in the run.")
    field: FieldConfig = Field(default_factory=FieldConfig)
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    cadence: CadenceConfig = Field(default_factory=CadenceConfig)
    truth: TruthConfig = Field(default_factory=TruthConfig)
    refcat: ReferenceCatalogConfig = Field(default_factory=ReferenceCatalogConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    steps: dict[str, StepConfig] = Field(
        default_factory=dict, description="Per-step overrides, by step name."
    )
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _check_name(self) -> RunConfig:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name: {self.name!r} is not a usable directory name")
        return self


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``2e4`` as a float, as YAML 1.2 does (PyYAML makes it a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _describe_error(err: dict[str, Any]) -> str:
    loc = ""
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "missing":
        return f"{loc}: missing value"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and ":" in msg:
        # model validators report "<field>: <problem>; ..." relative to their section
        parts = [p.strip() for p in msg.split(";")]
        prefix = f"{loc}." if loc else ""
        return "; ".join(prefix + p for p in parts)
    shown = repr(err.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{loc}: {msg[0].lower() + msg[1:]} (got {shown})"


def parse_run_config(data: Any, source: str, default_name: str | None = None) -> RunConfig:
    """Validate a mapping as a :class:`RunConfig`; raise :class:`ConfigError` naming each key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"top level: expected a mapping, got {type(data).__name__}"])
    if default_name is not None:
        data = {"name": default_name, **data}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            problems.extend(_describe_error(err).split("; "))
        raise ConfigError(source, problems) from None


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate ``runs/<name>.yaml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_run_config(data, str(path), default_name=path.stem)


@dataclass(frozen=True)
class Run:
    """A run: its validated configuration and the directory its outputs go to."""

    config: RunConfig
    config_path: Path
    dir: Path

    @cached_property
    def butler(self) -> Butler:
        """The run's data repository, writing images as ``storage`` says."""
        storage = self.config.storage
        compression = ImageCompression(
            mode=storage.compression,
            image_step=storage.image_step,
            variance_step=storage.variance_step,
        )
        return Butler(self.dir / "repo", compression=compression)

    @property
    def external(self) -> bool:
        """Whether the run's sky comes from external files rather than the simulator."""
        return self.config.inputs.source == "external"

    def input_path(self, path: str) -> Path:
        """An input path of the configuration, relative to the configuration's folder."""
        return (self.config_path.parent / Path(path).expanduser()).resolve()

    @cached_property
    def pixel_scale(self) -> float:
        """Pixel scale (arcsec/pixel): the sensor's, or the median of the external eimages'."""
        if not self.external:
            return self.config.sensor.pixel_scale
        visits = self.butler.get("visitTable")
        return float(np.median(np.asarray(visits["pixelScale"], dtype=float)))

    @cached_property
    def sensor_shape(self) -> tuple[int, int]:
        """(height, width) of the sensor in pixels: the configured one, or the largest of the
        ingested external eimages'."""
        if not self.external:
            return self.config.sensor.height_px, self.config.sensor.width_px
        eimages = self.butler.get("inputManifest")["eimages"].values()
        return max(int(e["height"]) for e in eimages), max(int(e["width"]) for e in eimages)

    @cached_property
    def field_centre(self) -> tuple[float, float]:
        """(RA, Dec) of the field (deg): the configured one, or the external visits' median
        nominal pointing."""
        if not self.external:
            return self.config.field.ra, self.config.field.dec
        visits = self.butler.get("visitTable")
        ra = np.deg2rad(np.asarray(visits["fieldRA"], dtype=float))
        dec = np.asarray(visits["fieldDec"], dtype=float)
        # the median of RA on the circle, about the first visit (fields near RA 0 wrap)
        ref = ra[0]
        offset = np.median(np.angle(np.exp(1j * (ra - ref))))
        return float(np.rad2deg(ref + offset) % 360.0), float(np.median(dec))


def _locate(path: Path) -> Path:
    """``path`` as given, or, if relative and absent, found from a parent of the working
    directory (a recipe opened in ``cookbook/`` names runs as ``runs/<name>``)."""
    if path.exists() or path.is_absolute():
        return path
    for parent in list(Path.cwd().parents)[:3]:
        candidate = parent / path
        if candidate.exists() or candidate.with_suffix(".yaml").exists():
            return candidate
    return path


def load_run(path: str | Path) -> Run:
    """A run from its YAML file or its run directory.

    ``runs/tiny.yaml`` and ``runs/tiny`` name the same run. The directory keeps a copy of the
    configuration (``config.yaml``) from the first time the run is used; before that, the
    directory's sibling ``runs/tiny.yaml`` is read.
    """
    path = _locate(Path(path)).resolve()
    if path.suffix in (".yaml", ".yml"):
        config = load_run_config(path)
        return Run(config=config, config_path=path, dir=path.with_suffix(""))
    copy = path / "config.yaml"
    if copy.exists():
        return Run(config=load_run_config(copy), config_path=copy, dir=path)
    sibling = path.with_suffix(".yaml")
    if sibling.exists():
        return Run(config=load_run_config(sibling), config_path=sibling, dir=path)
    raise ConfigError(
        str(path), ["not a run: neither a run configuration nor a run directory with config.yaml"]
    )
