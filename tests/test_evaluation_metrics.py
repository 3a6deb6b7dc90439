"""Ordinal, uncertainty and calibration metrics against cases worked out by hand; plain-line progress."""

import io
import math

import numpy as np
import pytest

from sklearn.metrics import f1_score

from yelp_lora.artifacts import Detailed
from yelp_lora.evaluation.evaluate import format_detailed
from yelp_lora.metrics import bootstrap_ci, calibration, detailed, headline, mcnemar, ordinal
from yelp_lora.evaluation.seeds import mean_std
from yelp_lora.util.progress import progress


def test_ordinal_small_case():
    # |diff| = 2, 0, 1 -> MAE 1.0, within one star 2/3
    scores = ordinal([0, 4, 2], [2, 4, 1])
    assert scores["mae_stars"] == pytest.approx(1.0)
    assert scores["within_one_star"] == pytest.approx(2 / 3)


def test_quadratic_weighted_kappa_by_hand():
    # O: (0,0)=1 (0,1)=1 (1,1)=2; rows 2,2 cols 1,3 -> E: (0,0)=.5 (0,1)=1.5 (1,0)=.5 (1,1)=1.5
    # sum w*O = 1/16, sum w*E = (1.5 + .5)/16 -> kappa = 1 - 1/2
    assert ordinal([0, 0, 1, 1], [0, 1, 1, 1])["qwk"] == pytest.approx(0.5)
    assert ordinal([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])["qwk"] == pytest.approx(1.0)
    # both reviews flipped end to end: sum w*O = 2 * 16/16, sum w*E = 2 * .5 * 16/16 -> 1 - 2
    assert ordinal([0, 4], [4, 0])["qwk"] == pytest.approx(-1.0)


def test_macro_f1_averages_the_labels_among_the_rows_or_the_predictions():
    assert headline([4, 4], [4, 4])["macro_f1"] == 1.0  # not 0.2: four labels absent from both
    # 0 right; 3 predicted but absent (F1 0); 4 present but missed (F1 0); 1 and 2 in neither.
    assert headline([0, 4], [0, 3])["macro_f1"] == pytest.approx(1 / 3)
    labels = [0, 1, 2, 3, 4, 4]
    assert headline(labels, [0, 1, 2, 3, 4, 0])["macro_f1"] == pytest.approx(
        f1_score(labels, [0, 1, 2, 3, 4, 0], average="macro"))  # every label present: as before
    text = format_detailed(Detailed(**detailed([4, 4], [4, 3])))
    assert "Macro-F1 : 0.3333 (over the 2 labels among the rows or the predictions: positive, strong_positive)" in text


def test_kappa_undefined_is_null_not_nan():
    assert ordinal([2, 2, 2], [2, 2, 2])["qwk"] is None


def test_expected_calibration_error_by_hand():
    probabilities = np.array([
        [0.9, 0.025, 0.025, 0.025, 0.025],  # conf .9, right      -> bin (0.8, 0.9]
        [0.9, 0.025, 0.025, 0.025, 0.025],  # conf .9, wrong      -> bin (0.8, 0.9]
        [0.1, 0.1, 0.6, 0.1, 0.1],          # conf .6, right      -> bin (0.5, 0.6]
        [0.1, 0.2, 0.2, 0.2, 0.3],          # conf .3, right      -> bin (0.2, 0.3]
    ])
    result = calibration([0, 1, 2, 4], probabilities)
    # 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.3|
    assert result["ece"] == pytest.approx(0.2 + 0.1 + 0.175)
    filled = {round(b["high"], 1): (b["count"], b["accuracy"], b["confidence"]) for b in result["bins"] if b["count"]}
    assert filled == {0.9: (2, 0.5, pytest.approx(0.9)), 0.6: (1, 1.0, pytest.approx(0.6)), 0.3: (1, 1.0, pytest.approx(0.3))}
    assert len(result["bins"]) == 10 and sum(b["count"] for b in result["bins"]) == 4


def test_perfectly_confident_and_right_has_zero_ece():
    assert calibration([3, 1], np.eye(5)[[3, 1]])["ece"] == pytest.approx(0.0)


def test_mcnemar_exact_binomial():
    labels = np.zeros(10, dtype=int)
    first = np.array([0, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # right on 0, 6-9
    second = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # right on 1-9
    test = mcnemar(labels, first, second)
    assert (test["only_first_right"], test["only_second_right"]) == (1, 5)
    assert test["method"] == "exact binomial"
    assert test["p_value"] == pytest.approx(2 * (1 + 6) / 2**6)  # two-sided P(X <= 1), X ~ Bin(6, 1/2)


def test_mcnemar_chi_squared_for_many_discordant_pairs():
    labels = np.zeros(40, dtype=int)
    first = np.r_[np.zeros(20), np.ones(10), np.zeros(10)].astype(int)
    second = np.r_[np.ones(20), np.zeros(10), np.zeros(10)].astype(int)
    test = mcnemar(labels, first, second)
    assert (test["only_first_right"], test["only_second_right"]) == (20, 10)
    assert test["statistic"] == pytest.approx((10 - 1) ** 2 / 30)
    assert test["p_value"] == pytest.approx(math.erfc(math.sqrt(2.7 / 2)))  # chi2(1) tail


def test_mcnemar_identical_models():
    assert mcnemar([0, 1], [0, 0], [0, 0])["p_value"] == 1.0


def test_bootstrap_interval_sanity():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 400)
    predictions = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 5)
    ci = bootstrap_ci(labels, predictions, resamples=500, seed=3, progress=False)
    for key in ("accuracy", "macro_f1"):
        assert ci[key]["low"] <= ci[key]["value"] <= ci[key]["high"]
    # binomial standard error at p=.5, n=400 is .025: a 95% interval is about .098 wide
    assert 0.07 < ci["accuracy"]["high"] - ci["accuracy"]["low"] < 0.13
    assert bootstrap_ci(labels, predictions, resamples=500, seed=3, progress=False) == ci
    assert bootstrap_ci(labels, predictions, resamples=500, seed=4, progress=False) != ci
    perfect = bootstrap_ci(labels, labels, resamples=50, seed=0, progress=False)
    assert perfect["accuracy"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_progress_writes_whole_lines_off_a_terminal():
    stream = io.StringIO()
    for _ in progress(range(5), desc="Counting", unit="step", stream=stream):
        pass
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("Counting:   0% 0/5") and lines[-1].startswith("Counting: 100% 5/5")


def test_sweep_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]).model_dump() == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}
    assert mean_std([0.5]).model_dump() == {"mean": 0.5, "std": None, "values": [0.5]}  # no spread from one seed
    assert mean_std([None, 1.0, 3.0]).mean == 2.0
