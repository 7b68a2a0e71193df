"""Calibration, "unknown" and the timeline's arithmetic on numbers small enough to check by hand: temperature
scaling recovers a known temperature, ECE equals a hand computation, top-1 never moves, the coverage table and
open-set AUROC match their definitions, ``unknown`` appears exactly below the threshold, segments merge
consecutive windows at the right times."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from evaluation.calibration import (expected_calibration_error, fit_calibration, fit_temperature,
                                    negative_log_likelihood, reliability_bins, softmax)
from evaluation.classifier import Prediction
from evaluation.selective import (UNKNOWN, answer, confidence_for_coverage, coverage_table, open_set_auroc,
                                  rejected_fraction)
from evaluation.timeline import build_timeline, merge_segments, segment_edges


def sampled(temperature: float, n: int = 20000, k: int = 5, seed: int = 0):
    """Logits z ~ N(0, 3^2) and labels drawn from softmax(z / temperature): the model whose logits are z is
    calibrated exactly at that temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, k))
    p = softmax(z, temperature)
    y = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    z, y = sampled(true_t)
    t = fit_temperature(z, y)
    assert t == pytest.approx(true_t, rel=0.05)
    for other in (0.8 * t, 1.25 * t):  # and it is the minimum of the NLL
        assert negative_log_likelihood(z, y, t) < negative_log_likelihood(z, y, other)
    assert fit_temperature(torch.from_numpy(z).float(), torch.from_numpy(y)) == pytest.approx(t, rel=1e-4)


def test_fit_temperature_without_a_wrong_track_keeps_1_and_bad_input_raises():
    z = np.array([[5.0, 0.0], [0.0, 5.0], [1.0, 0.5]])
    assert fit_temperature(z, [0, 1, 0]) == 1.0  # every track right: no finite maximum, the raw softmax stays
    assert "no finite" in fit_calibration(z, [0, 1, 0])["note"]
    assert 1.2 < fit_temperature(z, [0, 1, 1]) < 1.6  # one wrong track: a finite maximum (1.43), softer
    assert "note" not in fit_calibration(z, [0, 1, 1])
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), [0])


def test_ece_equals_a_hand_computation():
    # confidences 0.9, 0.9, 0.6, 0.55, 0.35 in 15 bins of width 1/15:
    # 0.9 -> bin 13 ((13/15, 14/15] = (0.867, 0.933]), 0.6 and 0.55 -> bin 8 ((0.533, 0.6]),
    # 0.35 -> bin 5 ((0.333, 0.4])
    p = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.6, 0.4, 0.0], [0.0, 0.45, 0.55], [0.35, 0.33, 0.32]])
    y = np.array([0, 0, 0, 2, 1])  # right, wrong, right, right, wrong
    # bin 13: acc 1/2, conf 0.9 -> |0.5 - 0.9| = 0.4, weight 2/5; bin 8: acc 1, conf 0.575 -> 0.425, weight 2/5;
    # bin 5: acc 0, conf 0.35 -> 0.35, weight 1/5
    expected = 2 / 5 * 0.4 + 2 / 5 * 0.425 + 1 / 5 * 0.35
    assert expected_calibration_error(p, y) == pytest.approx(expected, abs=1e-12)
    b = reliability_bins(p, y)
    assert b["counts"].tolist() == [0] * 5 + [1] + [0] * 2 + [2] + [0] * 4 + [2, 0]
    assert b["accuracy"][13] == 0.5 and b["confidence"][8] == pytest.approx(0.575)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0  # sure and right: perfectly calibrated
    assert expected_calibration_error(np.eye(3), [1, 2, 0]) == 1  # sure and always wrong


def test_calibration_lowers_ece_and_nll_on_an_overconfident_model():
    z, y = sampled(2.0, seed=1)  # logits twice too large: the raw softmax is over-confident
    record = fit_calibration(z, y)
    assert set(record) == {"temperature", "ece_before", "ece_after", "fitted_on", "tracks"}
    assert record["fitted_on"] == "val" and record["tracks"] == len(y)
    assert record["ece_after"] < 0.02 < 0.05 < record["ece_before"]
    assert negative_log_likelihood(z, y, record["temperature"]) < negative_log_likelihood(z, y)


def test_calibration_never_changes_top1():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 4, size=(500, 10))
    for t in (0.01, 0.3, 1.0, 1.7, 50.0):
        np.testing.assert_array_equal(softmax(z, t).argmax(1), z.argmax(1))
        pred = Prediction(torch.from_numpy(softmax(z[:1], t)[0]).float(), [str(i) for i in range(10)], 1, 1.0, t)
        assert pred.top_k(1)[0][0] == str(int(z[0].argmax()))


def test_unknown_appears_exactly_below_the_threshold():
    names = ["a", "b", "c"]
    p = torch.tensor([0.2, 0.5, 0.3])
    assert [answer(p, names, m) for m in (0.0, 0.49, 0.5, 0.5001, 0.9)] == ["b", "b", "b", UNKNOWN, UNKNOWN]
    for m, label in ((0.5, "b"), (0.51, UNKNOWN)):
        pred = Prediction(p, names, 3, 2.0, min_confidence=m)
        assert pred.label == label and pred.confidence == pytest.approx(0.5)
        assert pred.top_k(2) == [("b", pytest.approx(0.5)), ("c", pytest.approx(0.3))]  # the probabilities stay
    assert rejected_fraction([0.2, 0.5, 0.7, 0.9], 0.5) == 0.25  # only 0.2 is below 0.5


def test_coverage_table_and_open_set_auroc_by_hand():
    # confidences 0.95 (right), 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong), 0.5 (wrong), 0.4 (right),
    # 0.34 (wrong), 0.34 (right), 0.34 (wrong)
    conf = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.34, 0.34, 0.34]
    right = [1, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    p = np.array([[c, 1 - c, 0] if c > 0.5 else [c, (1 - c) / 2 + 0.01, (1 - c) / 2 - 0.01] for c in conf])
    y = np.array([0 if r else 1 for r in right])  # class 0 is always the top one
    rows = coverage_table(p, y)
    assert [r["tracks"] for r in rows] == [5, 8, 9, 10]
    assert [r["top1"] for r in rows] == pytest.approx([3 / 5, 4 / 8, 5 / 9, 5 / 10])
    assert [r["min_confidence"] for r in rows] == pytest.approx([0.6, 0.34, 0.34, 0.34])
    assert confidence_for_coverage(conf, 0.5) == 0.6 and confidence_for_coverage(conf, 0.1) == 0.95
    assert coverage_table(np.zeros((0, 3)), []) == []
    inside, outside = [0.9, 0.8, 0.6], [0.7, 0.3]
    # pairs (in, out) ranked right: 0.9 > both, 0.8 > both, 0.6 > 0.3 only: 5 of 6
    assert open_set_auroc(inside, outside) == pytest.approx(5 / 6)
    assert open_set_auroc(inside, outside) == roc_auc_score([1, 1, 1, 0, 0], inside + outside)
    with pytest.raises(ValueError, match="out-of-set"):
        open_set_auroc(inside, [])


def test_segments_merge_consecutive_windows_between_centres():
    names = ["x", "y"]
    # 6 windows of 2 s every 1 s over 7 s: x x y y y x (the last one low: unknown at min_confidence 0.6)
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.55, 0.45]])
    starts = np.arange(6.0)
    np.testing.assert_allclose(segment_edges(starts, 2.0, 7.0), [0, 1.5, 2.5, 3.5, 4.5, 5.5, 7])
    segments = merge_segments(p, starts, 2.0, 7.0, names)
    assert [(s.start, s.end, s.label, s.windows) for s in segments] == [(0, 2.5, "x", 2), (2.5, 5.5, "y", 3),
                                                                         (5.5, 7, "x", 1)]
    assert [s.probability for s in segments] == pytest.approx([0.85, 0.8, 0.55])
    timeline = build_timeline(p, starts, 2.0, 1.0, 7.0, names, top_k=5, min_confidence=0.6)
    assert [(s.label, s.probability) for s in timeline.segments][-1] == (UNKNOWN, pytest.approx(0.55))
    assert [(w.start, w.end) for w in timeline.windows] == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    assert timeline.windows[2].top_k == [("y", pytest.approx(0.7)), ("x", pytest.approx(0.3))]  # k capped at 2
    doc = timeline.to_dict()
    assert doc["segments"][1] == dict(start=2.5, end=5.5, label="y", probability=pytest.approx(0.8), windows=3)
    assert doc["windows"][0]["top_k"][0] == dict(label="x", probability=pytest.approx(0.9))
