"""Classification metrics against scikit-learn, including classes that never occur."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from cvdeploy.errors import InputError
from cvdeploy.pipeline import metrics
from cvdeploy.pipeline.metrics import classification_metrics


def assert_matches_sklearn(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> None:
    names = [f"class{i}" for i in range(n_classes)]
    got = classification_metrics(y_true, y_pred, names)
    labels = list(range(n_classes))
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    for average, suffix in (("macro", ""), ("weighted", "_weighted")):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        assert got[f"precision{suffix}"] == pytest.approx(p, abs=1e-12)
        assert got[f"recall{suffix}"] == pytest.approx(r, abs=1e-12)
        assert got[f"f1{suffix}"] == pytest.approx(f, abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    for i, name in enumerate(names):
        figures = got["per_class"][name]
        assert figures["precision"] == pytest.approx(p[i], abs=1e-12)
        assert figures["recall"] == pytest.approx(r[i], abs=1e-12)
        assert figures["f1"] == pytest.approx(f[i], abs=1e-12)
        assert figures["support"] == s[i]
    with warnings.catch_warnings():
        # scikit-learn warns about a 1x1 matrix even when `labels` names the single class.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        want = confusion_matrix(y_true, y_pred, labels=labels)
    assert got["confusion_matrix"] == want.tolist()
    assert got["count"] == len(y_true)


@pytest.mark.parametrize("seed", range(30))
def test_random_labels_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(1, 12))
    n = int(rng.integers(1, 300))
    # Draw from a subset so that some classes have no support and some no predictions.
    present = rng.choice(n_classes, size=max(1, n_classes // 2), replace=False)
    y_true = rng.choice(present, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
    assert_matches_sklearn(y_true, y_pred, n_classes)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1),
        )
    )
)
def test_hypothesis_labels_match_sklearn(data: tuple[int, list[tuple[int, int]]]) -> None:
    n_classes, pairs = data
    y_true, y_pred = (np.array(column) for column in zip(*pairs, strict=True))
    assert_matches_sklearn(y_true, y_pred, n_classes)


def test_absent_class_counts_as_zero_in_the_macro_mean() -> None:
    got = classification_metrics([0, 0, 1, 1], [0, 0, 1, 1], ["a", "b", "never"])
    assert got["accuracy"] == 1.0
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["f1_weighted"] == 1.0
    assert got["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert got["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_confusion_matrix_rows_are_true_classes() -> None:
    got = classification_metrics([0, 0, 0, 1], [1, 1, 0, 1], ["cat", "dog"])
    assert got["confusion_matrix"] == [[1, 2], [0, 1]]
    assert got["per_class"]["dog"]["precision"] == pytest.approx(1 / 3)
    assert got["per_class"]["cat"]["recall"] == pytest.approx(1 / 3)


def test_integral_floats_are_accepted() -> None:
    got = classification_metrics(np.array([0.0, 1.0]), [0, 1], ["a", "b"])
    assert got["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "message"),
    [
        ([0, 1], [0], ["a", "b"], "2 labels but y_pred has 1"),
        ([], [], ["a"], "empty"),
        ([0, 3], [0, 1], ["a", "b"], "class index 3"),
        ([0, -1], [0, 1], ["a", "b"], "class index -1"),
        ([0, 1], [0.5, 1], ["a", "b"], "integer class indices"),
        (["a"], ["a"], ["a"], "integer class indices"),
        ([[0]], [[0]], ["a"], "1-D"),
        ([0], [0], [], "names is empty"),
        ([0], [0], ["a", "a"], "twice"),
    ],
)
def test_bad_inputs_name_the_problem(
    y_true: object, y_pred: object, names: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        classification_metrics(y_true, y_pred, names)  # type: ignore[arg-type]


def test_public_api() -> None:
    assert metrics.__all__ == ["box_iou", "classification_metrics", "detection_metrics"]
