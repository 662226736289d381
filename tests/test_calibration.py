"""Temperature scaling fitted federatedly: the fit, combining site curves, the run, the model file."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType, RecordDict
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from brainfl.core.errors import BrainFLError
from brainfl.evaluation import external as evaluate
from brainfl.evaluation.calibration import (
    CALIBRATION_JSON,
    TEMPERATURES,
    SiteCurve,
    best_temperature,
    combine,
    headline_items,
    nll_curve,
    report_view,
    scores,
)
from brainfl.federation.calibration_query import CALIBRATION, NLL, calibrate, skip_reason
from brainfl.federation.client_app import query_round
from brainfl.federation.setup import QUERY, SETUP
from brainfl.inference import predict
from brainfl.model.files import FINAL_MODEL, load_model, read_metadata, save_model, stored_metadata
from brainfl.model.outputs import scale_probabilities
from brainfl.settings.run_settings import settings_with
from conftest import REPO_ROOT
from inprocess import NODE_BASE, InProcessGrid
from test_federation_setup import run_coordinated
from test_predict import tiny_model_with

CLASS_NAMES = ("a", "b", "c", "d")
SAMPLE_TESTING = REPO_ROOT / "sample_data" / "Testing"


def calibrated_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax probabilities, so those probabilities are calibrated."""
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(0.0, 2.0, (n, len(CLASS_NAMES))), axis=1)
    labels = (probabilities.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return labels, probabilities


def sharpened(probabilities: np.ndarray, power: float) -> np.ndarray:
    """``p ** power`` renormalized: over-confident for power > 1, under-confident below 1."""
    powered = probabilities**power
    return powered / powered.sum(axis=1, keepdims=True)


def fitted(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return best_temperature(TEMPERATURES, nll_curve(labels, probabilities)[0])


def test_temperature_scaling_repairs_an_over_confident_model():
    labels, calibrated = calibrated_set(2000, seed=0)
    over_confident = sharpened(calibrated, 3.0)
    temperature = fitted(labels, over_confident)
    assert 2.6 < temperature < 3.4  # softmax(log p**3 / 3) is the calibrated p
    scaled = scale_probabilities(over_confident, temperature)
    before, after = scores(labels, over_confident, CLASS_NAMES), scores(labels, scaled, CLASS_NAMES)
    assert after["ece"] < before["ece"] / 2 and after["nll"] < before["nll"]
    assert after["accuracy"] == before["accuracy"]
    assert (scaled.argmax(axis=1) == over_confident.argmax(axis=1)).all()


def test_scaling_is_softmax_of_log_p_over_t_and_leaves_broken_rows_and_t_1_alone():
    _, probabilities = calibrated_set(50, seed=1)
    probabilities = probabilities.astype(np.float32)
    scaled = scale_probabilities(probabilities, 1.7)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, softmax(np.log(probabilities) / 1.7, axis=1), rtol=1e-5)
    assert scale_probabilities(probabilities, 1.0) is probabilities
    probabilities[3] = np.nan
    assert np.isnan(scale_probabilities(probabilities, 0.5)[3]).all()
    assert np.isfinite(scale_probabilities(probabilities, 0.5)[4]).all()


def test_the_sum_of_two_sites_curves_picks_the_temperature_of_the_pooled_images():
    labels, calibrated = calibrated_set(1200, seed=2)
    probabilities = np.vstack([sharpened(calibrated[:400], 2.5), sharpened(calibrated[400:], 1.5)])
    sites = [
        SiteCurve(site, *nll_curve(labels[part], probabilities[part])[::-1])
        for site, part in ((0, slice(0, 400)), (1, slice(400, None)))
    ]
    fit = combine(sites)
    pooled_curve, pooled_images = nll_curve(labels, probabilities)
    np.testing.assert_allclose(sites[0].curve + sites[1].curve, pooled_curve, rtol=1e-12)
    assert fit.examples == pooled_images == 1200 and not fit.at_bound
    assert fit.temperature == pytest.approx(best_temperature(TEMPERATURES, pooled_curve))
    log_p = np.log(probabilities)

    def pooled_nll(t: float) -> float:  # the continuous fit on the pooled images, for reference
        return -log_softmax(log_p / t, axis=1)[np.arange(len(labels)), labels].sum()

    exact = minimize_scalar(pooled_nll, bounds=(0.25, 4.0), method="bounded", options={"xatol": 1e-6}).x
    assert fit.temperature == pytest.approx(exact, rel=2e-3)
    assert fit.sites[0][0] == 400 and fit.sites[0][1] > fit.temperature > fit.sites[1][1]


def test_a_site_with_three_times_the_images_pulls_t_toward_its_own():
    labels, calibrated = calibrated_set(1600, seed=3)

    def site(index: int, rows: slice, power: float) -> SiteCurve:
        return SiteCurve(index, *nll_curve(labels[rows], sharpened(calibrated[rows], power))[::-1])

    over, under = site(0, slice(0, 400), 2.0), site(1, slice(400, 800), 0.6)
    bigger_over = site(0, slice(0, 1200), 2.0)
    even, weighted = combine([over, under]).temperature, combine([bigger_over, under]).temperature
    own_over, own_under = combine([bigger_over]).temperature, combine([under]).temperature
    assert own_under < even < weighted < own_over
    assert abs(weighted - own_over) < abs(even - own_over)


def test_a_minimum_at_the_grid_end_is_flagged_and_sites_without_images_are_left_out():
    labels, calibrated = calibrated_set(300, seed=4)
    curve, images = nll_curve(labels, sharpened(calibrated, 8.0))  # best T = 8, beyond the grid
    fit = combine([SiteCurve(0, images, curve), SiteCurve(1, 0, np.zeros_like(curve))])
    assert fit.temperature == pytest.approx(TEMPERATURES[-1]) and fit.at_bound
    assert list(fit.sites) == [0]
    with pytest.raises(ValueError, match="no site curve"):
        combine([SiteCurve(1, 0, np.zeros_like(curve))])


def test_the_run_calibrates_on_every_site_with_numbers_only(tmp_path):
    """fraction-train 0.5: one site trains, both are asked; a calibration answer is numbers only."""
    grid, replies, _ = run_coordinated(tmp_path, {"num-server-rounds": 1, "fraction-train": 0.5})
    run = tmp_path / "run"
    sent = [message.metadata.message_type for message in grid.sent]
    assert sent == [MessageType.QUERY] * 2 + [MessageType.TRAIN] + [MessageType.QUERY] * 2
    asked = [m.content["config"][QUERY] for m in grid.sent if m.metadata.message_type == MessageType.QUERY]
    assert asked == [SETUP, SETUP, CALIBRATION, CALIBRATION]
    assert {m.metadata.dst_node_id for m in grid.sent[-2:]} == set(grid.get_node_ids())
    answers = [reply for reply in replies if reply.metadata.message_type == MessageType.QUERY][2:]
    for answer in answers:
        assert list(answer.content.keys()) == ["metrics"]  # no arrays, no config: a metric record
        metrics = answer.content["metrics"]
        assert len(metrics[NLL]) == len(TEMPERATURES) and metrics["num-examples"] > 0
        assert all(isinstance(v, int | float | list) for v in metrics.values())
    record = json.loads((run / CALIBRATION_JSON).read_text())
    assert stored_metadata(run / FINAL_MODEL)["temperature"] == record["temperature"] > 0
    assert sorted(site["site"] for site in record["sites"]) == [0, 1]
    assert record["examples"] == sum(answer.content["metrics"]["num-examples"] for answer in answers)
    test = record["test"]
    assert test["images"] == 8 and test["before"]["accuracy"] == test["after"]["accuracy"]
    assert set(test["before"]) == set(test["after"]) == {"ece", "nll", "accuracy"}
    assert "calibration: temperature" in (run / "logs" / "server.log").read_text()
    page = (run / "report.html").read_text()
    assert "Calibration: temperature scaling" in page and "ECE after temperature scaling" in page


def test_without_validation_splits_the_run_skips_calibration_and_the_model_keeps_t_1(tmp_path):
    _, replies, _ = run_coordinated(tmp_path, {"num-server-rounds": 1, "val-fraction": 0.0})
    run = tmp_path / "run"
    answers = [reply for reply in replies if reply.metadata.message_type == MessageType.QUERY][2:]
    assert [answer.content["metrics"]["num-examples"] for answer in answers] == [0, 0]
    assert "calibration skipped: no site has a validation split" in (run / "logs/server.log").read_text()
    assert not (run / CALIBRATION_JSON).exists()
    assert "temperature" not in stored_metadata(run / FINAL_MODEL)
    assert load_model(run / FINAL_MODEL).temperature == 1.0


def test_the_report_view_of_a_calibration_without_a_test_set():
    record = {"temperature": 1.5, "examples": 30, "sites": [{"site": 2, "examples": 30, "temperature": 1.5}]}
    view = report_view({**record, "test": None})
    assert view["effect"] is None and view["temperature"] == "1.500" and view["examples"] == 30
    assert view["sites"].loc[2, "its own T"] == "1.500"
    assert headline_items(record) == [("calibrated temperature T", "1.500")]
    assert "end of the grid" in report_view({**record, "at_grid_bound": True})["temperature"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"calibrate": False}, "calibrate=false"), ({"dp": "server-fixed", "norm": "group"}, "DP accounting")],
)
def test_settings_that_rule_calibration_out_send_nothing(tmp_path, caplog, change, reason):
    class NoGrid:
        def get_node_ids(self):
            raise AssertionError("no site may be asked")

    settings = settings_with(**{k.replace("-", "_"): v for k, v in change.items()})
    (tmp_path / CALIBRATION_JSON).write_text("{}")  # an earlier run's
    with caplog.at_level(logging.INFO, logger="flwr.brainfl"):
        assert calibrate(NoGrid(), settings, [], CLASS_NAMES, None, tmp_path) is None
    assert reason in skip_reason(settings) and f"calibration skipped: {skip_reason(settings)}" in caplog.text
    assert not (tmp_path / CALIBRATION_JSON).exists()


def test_a_site_refuses_a_query_it_does_not_know():
    grid = InProcessGrid(1, {})  # (a message needs a server's task identity)
    content = RecordDict({"config": ConfigRecord({QUERY: "weights-please"})})
    message = grid.create_message(content, MessageType.QUERY, NODE_BASE, "1")
    with pytest.raises(BrainFLError, match="unknown query 'weights-please'"):
        query_round(message, context=None)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The predict tests' tiny model, and the same model saved with temperature 2."""
    return tiny_model_with(tmp_path_factory, temperature=2.0)


def test_predict_and_evaluate_apply_the_models_temperature(model_files, capsys):
    plain, warm = model_files
    assert load_model(plain).temperature == 1.0 and load_model(warm).temperature == 2.0
    names = list(load_model(plain).class_names)
    raw = predict.predict_files(plain, [SAMPLE_TESTING])
    scaled = predict.predict_files(warm, [SAMPLE_TESTING])
    expected = softmax(np.log(raw[names].to_numpy()) / 2.0, axis=1)
    assert not np.allclose(scaled[names].to_numpy(), raw[names].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(scaled[names].to_numpy(), expected, atol=1e-5)
    assert (scaled["predicted_class"] == raw["predicted_class"]).all()
    evaluation = evaluate.evaluate_model(warm, SAMPLE_TESTING.parent, resamples=10)
    assert evaluation.temperature == 2.0 and evaluate.summary(evaluation)["temperature"] == 2.0
    np.testing.assert_allclose(evaluation.probabilities, scaled[names].to_numpy(), atol=1e-6)
    evaluate.print_scores(evaluation)
    assert "temperature T=2.000" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [0, -1.0, "warm", True, float("inf")])
def test_a_model_file_with_a_bad_temperature_is_refused(model_files, tmp_path, bad):
    plain, _ = model_files
    path = tmp_path / "bad.keras"
    save_model(keras.models.load_model(plain), path, {**read_metadata(plain), "temperature": bad})
    with pytest.raises(BrainFLError, match="temperature a positive number"):
        read_metadata(path)
