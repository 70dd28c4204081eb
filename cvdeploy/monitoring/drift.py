"""Image data drift: a reference profile, a sliding window and a pure verdict per feature.

The decision, :func:`compare`, is a pure function of a :class:`ReferenceProfile`, the rows of the
window and a :class:`DriftPolicy`: no I/O, no clock, no randomness. :class:`DriftDetector` wraps
it with the state a server needs (the window, the reference collected from the first requests,
failure counters) behind a lock, because the sampler feeds it from a worker thread.

Why a continuous feature needs *both* tests to flag drift:

* PSI (population stability index) measures how far the window's distribution moved, in units
  with a conventional reading (< 0.1 stable, 0.1-0.2 moderate, > 0.2 significant). It has no
  notion of sample size, so on a small window pure sampling noise can push it over 0.2.
* The two-sample KS test says whether a difference is *statistically* real, but with hundreds
  of samples it calls trivial shifts (half a grey level) significant.

Requiring a large shift (PSI) that is also unlikely to be noise (KS) keeps false alarms low
while a real shift (darker, blurrier, differently sized images) passes both by a wide margin.
Since every report tests about a dozen features at once, the KS level is Bonferroni-corrected:
each feature is tested at ``ks_pvalue / m`` for ``m`` features compared. Categorical features
(the top class) have no order, so KS does not apply; they are flagged on PSI over category
frequencies alone, with their own threshold.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cvdeploy.errors import ConfigError
from cvdeploy.monitoring.features import FEATURE_KINDS

__all__ = [
    "DriftDetector",
    "DriftPolicy",
    "DriftReport",
    "DriftWindow",
    "FeatureVerdict",
    "ReferenceProfile",
    "compare",
    "ks_2samp",
    "psi",
    "psi_categorical",
]

Status = Literal["ok", "drift", "insufficient_data"]

#: The fraction an empty bin is given before the log ratio, on either side. Without it one empty
#: bin makes PSI infinite; 1e-4 is the usual choice and caps one bin's term at about
#: ``p * ln(p / 1e-4)`` (0.46 for a bin holding 5% of the window and nothing of the reference).
PSI_EPSILON = 1e-4

#: Categories beyond the reference's most frequent ones are pooled into one "other" bucket, so
#: that a model with 1000 classes does not spread a 300-row window over 1000 near-empty bins
#: (whose PSI would be large from sampling noise alone).
MAX_CATEGORIES = 10


def _finite(values: Iterable[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _psi_from_fractions(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.maximum(expected, PSI_EPSILON)
    actual = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (continuous values).

    Bin edges are the reference's quantiles (``bins`` equal-mass bins), deduplicated so that
    discrete or constant features get fewer, wider bins instead of empty ones. Two more bins
    hold values below the reference's minimum and above its maximum, so a shift outside the
    reference's range is counted rather than clipped into the end bins. Empty bins take
    :data:`PSI_EPSILON`.

    Raises:
        ValueError: either sample has no finite values, or ``bins < 1``.
    """
    reference, window = _finite(expected), _finite(actual)
    if reference.size == 0 or window.size == 0:
        raise ValueError("psi needs at least one finite value in each sample")
    if bins < 1:
        raise ValueError(f"psi needs bins >= 1, got {bins}")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    interior = max(len(edges) - 1, 1)

    def histogram(values: np.ndarray) -> np.ndarray:
        # Index 0: below the minimum; 1..interior: the quantile bins, the last one closed at the
        # maximum; interior + 1: above the maximum.
        index = np.minimum(np.searchsorted(edges, values, side="right"), interior)
        index[values > edges[-1]] = interior + 1
        return np.bincount(index, minlength=interior + 2) / values.size

    return _psi_from_fractions(histogram(reference), histogram(window))


def _category_fractions(
    reference: np.ndarray, window: np.ndarray
) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Categories kept, and the fractions of each sample per category (last = "other")."""
    counts = Counter(reference.tolist())
    kept = [value for value, _ in counts.most_common(MAX_CATEGORIES - 1)]
    if len(counts) <= MAX_CATEGORIES:
        kept = sorted(counts)

    def fractions(values: np.ndarray) -> np.ndarray:
        index = {value: i for i, value in enumerate(kept)}
        buckets = np.zeros(len(kept) + 1)
        for value, count in Counter(values.tolist()).items():
            buckets[index.get(value, len(kept))] += count
        return buckets / values.size

    return kept, fractions(reference), fractions(window)


def psi_categorical(
    expected_values: Iterable[float] | np.ndarray, actual_values: Iterable[float] | np.ndarray
) -> float:
    """PSI over category frequencies (e.g. the top class), with rare categories pooled.

    The reference's :data:`MAX_CATEGORIES` - 1 most frequent categories keep their own bucket
    and everything else, including categories the reference never saw, shares an "other" one.

    Raises:
        ValueError: either sample has no finite values.
    """
    reference, window = _finite(expected_values), _finite(actual_values)
    if reference.size == 0 or window.size == 0:
        raise ValueError("psi_categorical needs at least one finite value in each sample")
    _, expected, actual = _category_fractions(reference, window)
    return _psi_from_fractions(expected, actual)


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(statistic, p-value)``.

    Uses SciPy's asymptotic distribution: with the hundreds of samples a window holds it is
    accurate, costs a fraction of a millisecond, and never falls back with a warning as the
    exact method can. Two samples of one and the same constant give ``(0.0, 1.0)``.

    Raises:
        ValueError: either sample has no finite values.
    """
    from scipy import stats  # type: ignore[import-untyped]  # heavy; only the sampler needs it

    first, second = _finite(a), _finite(b)
    if first.size == 0 or second.size == 0:
        raise ValueError("ks_2samp needs at least one finite value in each sample")
    result = stats.ks_2samp(first, second, method="asymp")
    statistic, pvalue = float(result.statistic), float(result.pvalue)
    if math.isnan(statistic) or math.isnan(pvalue):  # defensive: never let NaN reach a verdict
        return 0.0, 1.0
    return statistic, pvalue


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Reference values per feature, bounded in size, storable as JSON with a model version.

    Attributes:
        values: feature name -> 1-D float64 array of reference values (finite only).
    """

    values: Mapping[str, np.ndarray]

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, float]], max_samples: int = 5000
    ) -> ReferenceProfile:
        """Profile of feature rows (from reference images or the first requests).

        Rows may hold different features (image and prediction features come from different
        places); each feature keeps its finite values. More than ``max_samples`` values are
        thinned evenly across the rows, so the profile stays representative of the whole run.
        """
        if max_samples < 1:
            raise ConfigError(f"max_samples must be at least 1, got {max_samples}")
        columns: dict[str, list[float]] = {}
        for row in rows:
            for name, value in row.items():
                columns.setdefault(name, []).append(float(value))
        values: dict[str, np.ndarray] = {}
        for name, column in sorted(columns.items()):
            array = _finite(column)
            if array.size > max_samples:
                array = array[np.linspace(0, array.size - 1, max_samples).round().astype(int)]
            values[name] = array
        return cls(values=values)

    def __len__(self) -> int:
        """The largest number of reference values any feature has."""
        return max((v.size for v in self.values.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "features": {name: array.tolist() for name, array in self.values.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        try:
            features = data["features"]
            return cls(
                values={
                    str(name): _finite([float(v) for v in column])
                    for name, column in features.items()
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"not a drift reference profile ({type(exc).__name__}: {exc}); expected "
                '{"version": 1, "features": {"name": [floats, ...]}}'
            ) from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"a drift reference profile is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("a drift reference profile must be a JSON object")
        return cls.from_dict(data)


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds of the verdict; the defaults suit windows of a few hundred requests."""

    #: PSI above this is a significant shift (the conventional 0.2).
    psi_threshold: float = 0.2
    #: Family-wise KS level; each feature is tested at ``ks_pvalue / m`` (Bonferroni).
    ks_pvalue: float = 0.01
    #: PSI threshold for categorical features, which have no second test to back it up.
    categorical_psi_threshold: float = 0.25
    #: Window values a feature needs before it gets a verdict.
    min_window: int = 200
    #: Reference values a feature needs before it gets a verdict.
    min_reference: int = 50
    #: Quantile bins for continuous PSI.
    bins: int = 10

    def __post_init__(self) -> None:
        if self.psi_threshold <= 0:
            raise ConfigError(f"psi_threshold must be > 0, got {self.psi_threshold}")
        if self.categorical_psi_threshold <= 0:
            raise ConfigError(
                f"categorical_psi_threshold must be > 0, got {self.categorical_psi_threshold}"
            )
        if not 0 < self.ks_pvalue < 1:
            raise ConfigError(f"ks_pvalue must be between 0 and 1, got {self.ks_pvalue}")
        if self.min_window < 2 or self.min_reference < 2:
            raise ConfigError(
                f"min_window and min_reference must be at least 2, got {self.min_window} and "
                f"{self.min_reference}"
            )
        if self.bins < 1:
            raise ConfigError(f"bins must be at least 1, got {self.bins}")


@dataclass(frozen=True)
class FeatureVerdict:
    """The verdict on one feature, with the figures behind it and a sentence saying why."""

    feature: str
    status: Status
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    reference_mean: float | None
    window_mean: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "status": self.status,
            "psi": _json_float(self.psi),
            "ks_statistic": _json_float(self.ks_statistic),
            "ks_pvalue": _json_float(self.ks_pvalue),
            "reference_mean": _json_float(self.reference_mean),
            "window_mean": _json_float(self.window_mean),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DriftReport:
    """The verdict on a window: ``drift`` if any feature drifted, ``ok`` if at least one feature
    could be judged and none drifted, else ``insufficient_data``."""

    status: Status
    window_size: int
    features: dict[str, FeatureVerdict]
    drifted: list[str]
    #: Why the report as a whole has its status (e.g. "reference: 120 of 500 rows collected").
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "window_size": self.window_size,
            "drifted": list(self.drifted),
            "reason": self.reason,
            "features": {name: verdict.to_dict() for name, verdict in self.features.items()},
        }


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _g(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-3 else f"{value:.4g}"


def _categorical_verdict(
    name: str, reference: np.ndarray, window: np.ndarray, policy: DriftPolicy
) -> FeatureVerdict:
    kept, expected, actual = _category_fractions(reference, window)
    score = _psi_from_fractions(expected, actual)
    labels = [f"{v:g}" for v in kept] + ["other"]
    moved = int(np.argmax(np.abs(actual - expected)))
    detail = (
        f"{name}: share of {labels[moved]} {actual[moved]:.2f} vs reference {expected[moved]:.2f}"
    )
    drifted = score > policy.categorical_psi_threshold
    comparison = ">" if drifted else "<="
    return FeatureVerdict(
        feature=name,
        status="drift" if drifted else "ok",
        psi=score,
        ks_statistic=None,
        ks_pvalue=None,
        reference_mean=None,
        window_mean=None,
        reason=f"{detail}; PSI {score:.2f} {comparison} {policy.categorical_psi_threshold:g}",
    )


def _continuous_verdict(
    name: str, reference: np.ndarray, window: np.ndarray, policy: DriftPolicy, level: float
) -> FeatureVerdict:
    score = psi(reference, window, policy.bins)
    statistic, pvalue = ks_2samp(reference, window)
    reference_mean, window_mean = float(reference.mean()), float(window.mean())
    detail = f"{name}: window mean {_g(window_mean)} vs reference {_g(reference_mean)}"
    shifted, significant = score > policy.psi_threshold, pvalue < level
    psi_text = f"PSI {score:.2f} {'>' if shifted else '<='} {policy.psi_threshold:g}"
    ks_text = f"KS p={pvalue:.2g} {'<' if significant else '>='} {level:.2g}"
    if shifted and significant:
        reason = f"{detail}; {psi_text} and {ks_text}"
    elif shifted:
        reason = f"{detail}; {psi_text} but {ks_text} (could be sampling noise)"
    elif significant:
        reason = f"{detail}; {ks_text} but {psi_text} (a real but small shift)"
    else:
        reason = f"{detail}; {psi_text} and {ks_text}"
    return FeatureVerdict(
        feature=name,
        status="drift" if shifted and significant else "ok",
        psi=score,
        ks_statistic=statistic,
        ks_pvalue=pvalue,
        reference_mean=reference_mean,
        window_mean=window_mean,
        reason=reason,
    )


def compare(
    reference: ReferenceProfile,
    window: Sequence[Mapping[str, float]],
    policy: DriftPolicy = DriftPolicy(),  # frozen, so one shared default is safe
) -> DriftReport:
    """The drift verdict of a window of feature rows against a reference: a pure function.

    Every feature in the reference or the window gets a verdict. A feature with fewer than
    ``policy.min_window`` window values or ``policy.min_reference`` reference values is
    ``insufficient_data``. Continuous features drift when PSI > ``psi_threshold`` and the KS
    p-value < ``ks_pvalue / m`` (``m``: continuous features with enough data); categorical
    ones when PSI > ``categorical_psi_threshold``.
    """
    columns: dict[str, list[float]] = {}
    for row in window:
        for name, value in row.items():
            columns.setdefault(name, []).append(float(value))
    names = sorted(set(reference.values) | set(columns))
    empty = np.empty(0)
    samples = {
        name: (reference.values.get(name, empty), _finite(columns.get(name, ()))) for name in names
    }
    ready = {
        name
        for name, (ref, win) in samples.items()
        if ref.size >= policy.min_reference and win.size >= policy.min_window
    }
    tested = sum(1 for name in ready if FEATURE_KINDS.get(name, "continuous") == "continuous")
    level = policy.ks_pvalue / max(tested, 1)

    verdicts: dict[str, FeatureVerdict] = {}
    for name in names:
        ref, win = samples[name]
        if name not in ready:
            verdicts[name] = FeatureVerdict(
                feature=name,
                status="insufficient_data",
                psi=None,
                ks_statistic=None,
                ks_pvalue=None,
                reference_mean=float(ref.mean()) if ref.size else None,
                window_mean=float(win.mean()) if win.size else None,
                reason=(
                    f"{name}: {win.size} window values (need {policy.min_window}) and "
                    f"{ref.size} reference values (need {policy.min_reference})"
                ),
            )
        elif FEATURE_KINDS.get(name, "continuous") == "categorical":
            verdicts[name] = _categorical_verdict(name, ref, win, policy)
        else:
            verdicts[name] = _continuous_verdict(name, ref, win, policy, level)

    drifted = [name for name, verdict in verdicts.items() if verdict.status == "drift"]
    status: Status
    if drifted:
        status, reason = "drift", f"drift in {', '.join(drifted)}"
    elif ready:
        status, reason = "ok", f"no drift in {len(ready)} features over {len(window)} rows"
    else:
        status = "insufficient_data"
        reason = (
            f"{len(window)} window rows; a verdict needs {policy.min_window} values of a feature "
            f"and {policy.min_reference} reference values"
        )
    return DriftReport(
        status=status,
        window_size=len(window),
        features=verdicts,
        drifted=drifted,
        reason=reason,
    )


class DriftWindow:
    """The most recent ``size`` feature rows (a bounded deque; not locked on its own)."""

    def __init__(self, size: int = 500) -> None:
        if size < 1:
            raise ConfigError(f"the drift window size must be at least 1, got {size}")
        self.size = size
        self._rows: deque[dict[str, float]] = deque(maxlen=size)

    def add(self, row: Mapping[str, float]) -> None:
        self._rows.append(dict(row))

    def rows(self) -> list[dict[str, float]]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class _Collecting:
    """Rows gathered for a reference built from the first requests."""

    target: int
    rows: list[dict[str, float]] = field(default_factory=list)


class DriftDetector:
    """A sliding window compared to a reference, fed one feature row at a time.

    Args:
        reference: the reference profile, e.g. stored with the registered model version.
        reference_from_first: with no ``reference``, build one from the first N rows observed
            (those rows do not enter the window).
        window_size: rows in the sliding window.
        policy: the verdict's thresholds.
        every: :meth:`report` recomputes after at least this many new observations and
            otherwise returns the last report (``report(refresh=True)`` always recomputes).
        max_failures: how many recent failure reasons are kept.
    """

    def __init__(
        self,
        reference: ReferenceProfile | None = None,
        *,
        reference_from_first: int | None = None,
        window_size: int = 500,
        policy: DriftPolicy | None = None,
        every: int = 50,
        max_failures: int = 10,
    ) -> None:
        if (reference is None) == (reference_from_first is None):
            raise ConfigError(
                "give a drift detector either a reference profile or reference_from_first=N "
                "(build the reference from the first N requests), not both or neither"
            )
        if reference_from_first is not None and reference_from_first < 1:
            raise ConfigError(
                f"reference_from_first must be at least 1, got {reference_from_first}"
            )
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}")
        self.policy = policy or DriftPolicy()
        if reference_from_first is not None and reference_from_first < self.policy.min_reference:
            # Otherwise every feature would stay "insufficient_data" forever, silently.
            raise ConfigError(
                f"reference_from_first={reference_from_first} is below the policy's "
                f"min_reference={self.policy.min_reference}; raise it or lower min_reference"
            )
        self.every = every
        self._lock = threading.Lock()
        self._reference = reference
        self._collecting = (
            None if reference_from_first is None else _Collecting(reference_from_first)
        )
        self._window = DriftWindow(window_size)
        self._observed = 0
        self._failed = 0
        self._failures: deque[str] = deque(maxlen=max_failures)
        self._report: DriftReport | None = None
        self._since_report = 0

    @property
    def reference(self) -> ReferenceProfile | None:
        """The reference profile; ``None`` while it is still being collected."""
        with self._lock:
            return self._reference

    @property
    def observed(self) -> int:
        """Rows observed, those collected for the reference included."""
        with self._lock:
            return self._observed

    @property
    def failed(self) -> int:
        """Sampled requests whose features could not be computed."""
        with self._lock:
            return self._failed

    @property
    def recent_failures(self) -> list[str]:
        with self._lock:
            return list(self._failures)

    def observe(self, row: Mapping[str, float]) -> None:
        """Add one request's feature row (to the reference while collecting, else the window)."""
        with self._lock:
            self._observed += 1
            self._since_report += 1
            collecting = self._collecting
            if collecting is None:
                self._window.add(row)
                return
            collecting.rows.append(dict(row))
            if len(collecting.rows) >= collecting.target:
                self._reference = ReferenceProfile.from_rows(collecting.rows)
                self._collecting = None

    def record_failure(self, reason: str) -> None:
        """Count a sampled request whose features could not be computed, and keep why."""
        with self._lock:
            self._failed += 1
            self._failures.append(reason)

    def report(self, *, refresh: bool = False) -> DriftReport:
        """The current verdict, recomputed when ``every`` rows arrived since the last one."""
        with self._lock:
            if self._report is not None and not refresh and self._since_report < self.every:
                return self._report
            reference, rows = self._reference, self._window.rows()
            collecting = self._collecting
            self._since_report = 0
        if reference is None:
            gathered = 0 if collecting is None else len(collecting.rows)
            target = 0 if collecting is None else collecting.target
            report = DriftReport(
                status="insufficient_data",
                window_size=0,
                features={},
                drifted=[],
                reason=f"collecting the reference: {gathered} of {target} rows",
            )
        else:
            # Outside the lock: the statistics take milliseconds and observe() must not wait.
            report = compare(reference, rows, self.policy)
        with self._lock:
            self._report = report
        return report
