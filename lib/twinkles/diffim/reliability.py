"""The real/bogus score of DIASources: a classifier of their features
(:mod:`~twinkles.diffim.realbogus`), trained on labelled DIASources of the project's own scenes.

The real class is injected point sources that the difference imaging found
(:mod:`~twinkles.diffim.injection`) and DIASources of true variable objects; the bogus class is
DIASources that the truth places on no variable object, whatever their cause
(:func:`twinkles.validation.dia.classify_artifacts`). As DES's autoScan (Goldstein et al. 2015,
AJ 150, 82), the classifier is a random forest (scikit-learn's, Breiman 2001): the features'
relation to the class is far from linear (a PSF-fit chi^2 that would condemn a faint source is
normal for a bright one; a bright template is fine for a supernova on its host, not for a
star's residual), which a logistic regression of the same features did not follow as well
when trained on one scene and tested on another.

What is kept is not a fitted model, whose pickle ties it to a scikit-learn version, but its
**training set** (:data:`TRAINING_SET`, a few thousand rows of features and labels from scenes
the evaluation runs did not use), from which the forest is grown, with a fixed seed, the
first time a process needs it: the same features and labels give the same forest.
``examples/train_real_bogus.py`` rebuilds the set from runs made with ``injection.enabled``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.table import Table
from pydantic import Field

from twinkles.diffim.realbogus import REAL_BOGUS_FEATURES
from twinkles.section import Section

__all__ = [
    "TRAINING_SET",
    "RealBogusClassifier",
    "RealBogusConfig",
    "default_classifier",
    "feature_matrix",
]

#: The packaged training set: features (:data:`REAL_BOGUS_FEATURES` and ``isDipole``), ``real``
#: and ``label`` (the cause of a bogus one, or ``injected`` / ``variable``), ``scene``.
TRAINING_SET = Path(__file__).resolve().parent / "data" / "real_bogus_training.ecsv"


class RealBogusConfig(Section):
    """The real/bogus classifier and the cut on its score."""

    classifier: Literal["random_forest", "gradient_boosting"] = Field(
        "random_forest",
        description="random_forest (as DES's autoScan) or scikit-learn's histogram gradient "
        "boosting.",
    )
    n_trees: int = Field(300, ge=10, le=5000, description="Trees (or boosting iterations).")
    min_samples_leaf: int = Field(
        3, ge=1, description="Fewest training DIASources in a leaf (the forest's smoothing)."
    )
    seed: int = Field(0, ge=0, description="Seed of the forest's bootstrap draws.")
    min_reliability: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="DIASources at least this reliable count as real (DIAObjects' "
        "nReliableDiaSources, the cut validate_dia reports).",
    )


def feature_matrix(table: Table) -> np.ndarray:
    """The classifier's inputs (n, 9) from a DIASource table's feature columns.

    Scales that spread over decades (S/N, chi^2, distance) enter as logarithms; ``apRatio``,
    which is unbounded where the PSF fit is near zero, is clipped to [-3, 5] and enters also
    as its distance from 1; a missing value becomes a neutral one (``posFraction`` 0.5,
    ``apRatio`` 0, no template light).
    """
    missing = [c for c in (*REAL_BOGUS_FEATURES, "isDipole") if c not in table.colnames]
    if missing:
        raise ValueError(f"feature_matrix: the table has no {', '.join(missing)} column")

    def col(name: str, fill: float) -> np.ndarray:
        return np.nan_to_num(np.asarray(table[name], float), nan=fill, posinf=fill, neginf=fill)

    ap = np.clip(col("apRatio", 0.0), -3.0, 5.0)
    return np.column_stack(
        [
            np.log(np.clip(np.abs(col("snr", 1.0)), 1.0, 1e5)),
            np.log(np.clip(col("psfChi2", 1.0), 0.1, 1e5)),
            col("posFraction", 0.5),
            ap,
            np.abs(ap - 1.0),
            col("templateContrast", 0.0),
            np.log(np.clip(col("satDistance", 60.0), 0.1, 60.0)),
            col("edgeDistance", 100.0),
            np.asarray(table["isDipole"], float),
        ]
    )


class RealBogusClassifier:
    """Scores DIASources: the probability that each is real, from its features."""

    def __init__(self, config: RealBogusConfig | None = None):
        self.config = config or RealBogusConfig()
        self._model = None

    def fit(self, table: Table, real: np.ndarray) -> RealBogusClassifier:
        """Grow the classifier on labelled DIASources (``real`` True for the real class).

        The classes are weighted to equal total weight, so the score does not follow the
        training set's mix of real and bogus.
        """
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

        real = np.asarray(real, bool)
        if real.all() or not real.any():
            raise ValueError("RealBogusClassifier.fit: needs both real and bogus DIASources")
        cfg = self.config
        if cfg.classifier == "random_forest":
            model = RandomForestClassifier(
                n_estimators=cfg.n_trees,
                min_samples_leaf=cfg.min_samples_leaf,
                class_weight="balanced",
                random_state=cfg.seed,
                n_jobs=1,
            )
        else:
            model = HistGradientBoostingClassifier(
                max_iter=cfg.n_trees,
                min_samples_leaf=cfg.min_samples_leaf,
                class_weight="balanced",
                random_state=cfg.seed,
            )
        self._model = model.fit(feature_matrix(table), real)
        return self

    def score(self, table: Table) -> np.ndarray:
        """Reliability in [0, 1] of each DIASource of ``table`` (1: real)."""
        if self._model is None:
            raise RuntimeError("RealBogusClassifier.score: fit it first")
        if len(table) == 0:
            return np.zeros(0)
        return self._model.predict_proba(feature_matrix(table))[:, 1]

    @classmethod
    def from_training_set(
        cls, path: Path = TRAINING_SET, config: RealBogusConfig | None = None
    ) -> RealBogusClassifier:
        """A classifier grown on a training set written by ``examples/train_real_bogus.py``."""
        if not Path(path).exists():
            raise FileNotFoundError(f"real/bogus training set {path} not found")
        training = Table.read(path, format="ascii.ecsv")
        return cls(config).fit(training, np.asarray(training["real"], bool))


@lru_cache(maxsize=1)
def default_classifier() -> RealBogusClassifier:
    """The classifier of the packaged training set and the default configuration, grown once
    per process."""
    return RealBogusClassifier.from_training_set()
