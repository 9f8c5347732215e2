"""Property-based tests: the metrics against scikit-learn and their own laws, and the dataset
readers' parsing of annotation lines, on inputs hypothesis makes up. Example counts stay
modest: CI runs on two cores."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, jaccard_score

from partbench.datasets.text_tables import read_lines
from partbench.errors import DataError
from partbench.metrics.resampling import bootstrap_ci
from partbench.metrics.scores import miou, retrieval_ap

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- retrieval_ap against scikit-learn ---------------------------------------------------


@st.composite
def retrieval_sets(draw):
    """Features from a few small integer vectors, so that exact duplicates (ties in cosine
    similarity) are common; labels from a few classes."""
    n = draw(st.integers(2, 16))
    dim = draw(st.integers(1, 4))
    pool = draw(
        st.lists(
            st.lists(st.integers(-2, 2), min_size=dim, max_size=dim).filter(any),
            min_size=1,
            max_size=6,
        )
    )
    rows = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return np.array(rows, dtype=np.float64), np.array(labels, dtype=np.int64)


def _sklearn_ap(features: np.ndarray, labels: np.ndarray, include_self: bool) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    # retrieval_ap rounds cosines to 9 decimals so that equal ones tie; the reference sees the same.
    sims = np.round(unit @ unit.T, 9)
    out = np.empty(len(labels))
    for q in range(len(labels)):
        keep = np.ones(len(labels), dtype=bool)
        if not include_self:
            keep[q] = False
        relevant = labels[keep] == labels[q]
        out[q] = average_precision_score(relevant, sims[q, keep]) if relevant.any() else np.nan
    return out


@settings(max_examples=20, deadline=None)  # scikit-learn's checks make each query slow
@given(retrieval_sets(), st.booleans())
def test_retrieval_ap_equals_scikit_learn(data, include_self: bool) -> None:
    features, labels = data
    ours = retrieval_ap(features, labels, include_self=include_self, chunk=5)
    reference = _sklearn_ap(features, labels, include_self)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours[~np.isnan(ours)], reference[~np.isnan(reference)], rtol=0, atol=1e-12)


@SETTINGS
@given(retrieval_sets())
def test_retrieval_ap_does_not_depend_on_the_chunk(data) -> None:
    features, labels = data
    whole = retrieval_ap(features, labels, chunk=len(labels))
    np.testing.assert_array_equal(retrieval_ap(features, labels, chunk=1), whole)
    assert np.all((whole > 0) & (whole <= 1))  # with itself in the gallery, every query has a hit


# --- miou --------------------------------------------------------------------------------


@st.composite
def label_maps(draw):
    classes = draw(st.integers(1, 6))
    size = draw(st.integers(1, 60))
    target = draw(
        st.lists(st.one_of(st.integers(0, classes - 1), st.just(255)), min_size=size, max_size=size)
    )
    pred = draw(st.lists(st.integers(0, classes - 1), min_size=size, max_size=size))
    return np.array(pred), np.array(target), classes


@SETTINGS
@given(label_maps())
def test_miou_equals_scikit_learn_jaccard_over_present_classes(data) -> None:
    pred, target, classes = data
    keep = target != 255
    present = sorted(set(pred[keep].tolist()) | set(target[keep].tolist()))
    ours = miou(pred, target, classes)
    if not present:
        assert math.isnan(ours)
        return
    reference = jaccard_score(target[keep], pred[keep], labels=present, average="macro", zero_division=0)
    assert ours == pytest.approx(reference, abs=1e-12)
    assert 0.0 <= ours <= 1.0


@SETTINGS
@given(label_maps())
def test_miou_is_one_for_a_perfect_prediction_and_ignores_the_ignore_label(data) -> None:
    pred, target, classes = data
    assume((target != 255).any())
    perfect = np.where(target == 255, pred, target)  # whatever it says on ignored pixels
    assert miou(perfect, target, classes) == 1.0
    order = np.random.default_rng(0).permutation(len(target))
    assert miou(pred[order], target[order], classes) == pytest.approx(miou(pred, target, classes))


# --- bootstrap_ci ------------------------------------------------------------------------


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, deadline=None)
@given(finite, st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_bootstrap_of_a_constant_sample_is_the_constant(value: float, n: int, seed: int) -> None:
    low, high = bootstrap_ci(np.full(n, value), n_resamples=50, seed=seed)
    # Every resample's mean is the constant, up to the rounding of a weighted sum (a few ulps:
    # 2.593494602493335e-110 comes back one ulp above itself).
    slack = 8 * math.ulp(value)
    assert low - slack <= value <= high + slack
    assert abs(high - low) <= 2 * slack


@settings(max_examples=25, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=40),
    st.integers(0, 2**32 - 1),
    st.floats(0.5, 0.9),
    st.floats(0.01, 0.09),
)
def test_bootstrap_is_monotone_in_confidence_and_deterministic(values, seed, lower, extra) -> None:
    data = np.array(values)
    narrow = bootstrap_ci(data, n_resamples=100, confidence=lower, seed=seed)
    wide = bootstrap_ci(data, n_resamples=100, confidence=lower + extra, seed=seed)
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
    assert bootstrap_ci(data, n_resamples=100, confidence=lower, seed=seed) == narrow
    # The interval lies within the sample's range (a resampled mean cannot leave it).
    assert data.min() - 1e-6 <= wide[0] and wide[1] <= data.max() + 1e-6


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=30), st.integers(0, 1000))
def test_bootstrap_of_item_counts_matches_the_array_form(labels, seed) -> None:
    values = np.array(labels, dtype=np.float64)
    by_counts = bootstrap_ci(
        len(values), lambda c: float(np.sum(values * c) / c.sum()), n_resamples=60, seed=seed
    )
    assert by_counts == bootstrap_ci(values, n_resamples=60, seed=seed)


# --- the readers' annotation lines (CUB's text tables) ------------------------------------

integers = st.integers(-(10**12), 10**12)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
words = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
names = st.lists(words, min_size=1, max_size=3).map(" ".join)  # CUB's part names: "left wing"
blank = st.sampled_from(["", "   ", "\t"])


@st.composite
def tables(draw):
    """Rows of (int, float, int, name) as CUB writes them, with blank lines in between."""
    rows = draw(st.lists(st.tuples(integers, floats, integers, names), min_size=1, max_size=12))
    lines: list[str] = []
    numbers: list[int] = []  # 1-based line of each row
    for row in rows:
        lines.extend(draw(st.lists(blank, max_size=2)))
        sep = draw(st.sampled_from([" ", "  ", "\t"]))
        lines.append(sep.join([str(row[0]), repr(row[1]), str(row[2]), row[3]]))
        numbers.append(len(lines))
    return rows, lines, numbers


# One folder for every example, removed when the session ends: a folder per example would
# leave hundreds behind on each run (hypothesis does not take function-scoped fixtures).
_TABLES = tempfile.TemporaryDirectory(prefix="partbench-tables-")


def _write(lines: list[str]) -> Path:
    path = Path(_TABLES.name) / "parts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@SETTINGS
@given(tables())
def test_well_formed_lines_parse_back_to_their_values(table) -> None:
    rows, lines, numbers = table
    path = _write(lines)
    parsed = [
        (line.number, line.int(0, "id"), line.float(1, "x"), line.int(2, "n"), line.fields[3])
        for line in read_lines(path, 4, last_has_spaces=True)
    ]
    assert parsed == [(number, *row) for number, row in zip(numbers, rows, strict=True)]


bad_numbers = st.sampled_from(["x", "1.5", "1e3", "--1", "nan", "", "12a", "0x1F"])
bad_floats = st.sampled_from(["x", "nan", "inf", "-inf", "1..2", "1,5", "NaN", "e3"])


@SETTINGS
@given(tables(), st.data())
def test_a_malformed_line_names_the_file_and_its_line(table, data) -> None:
    rows, lines, numbers = table
    k = data.draw(st.integers(0, len(rows) - 1))
    fault = data.draw(st.sampled_from(["fields", "int", "float"]))
    row = [str(rows[k][0]), repr(rows[k][1]), str(rows[k][2]), rows[k][3]]
    if fault == "fields":
        row = row[: data.draw(st.integers(1, 3))]
    elif fault == "int":
        row[0] = data.draw(bad_numbers)
        assume(row[0] != "")
    else:
        row[1] = data.draw(bad_floats)
    lines = list(lines)
    lines[numbers[k] - 1] = " ".join(row)
    path = _write(lines)
    with pytest.raises(DataError) as err:
        for line in read_lines(path, 4, last_has_spaces=True):
            line.int(0, "id"), line.float(1, "x"), line.int(2, "n")
    assert str(err.value).startswith(f"{path}, line {numbers[k]}: ")


@pytest.mark.parametrize("token", ["1_000", "\u0661\u0662", "1_0.5"])
def test_numbers_that_python_reads_but_no_table_holds_are_malformed(token: str) -> None:
    path = _write([f"{token} {token}"])
    with pytest.raises(DataError, match=r"line 1: "):
        for line in read_lines(path, 2):
            line.int(0, "id") if "." not in token else line.float(1, "x")
