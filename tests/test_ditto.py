"""Tests of Ditto: each site's personal model, kept in Context.state across rounds, pulled toward the
received global model by lambda, scored at the site and never sent."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from flwr.app import MessageType, RecordDict

from brainfl.core.errors import BrainFLError
from brainfl.data.sites import site_data
from brainfl.federation import ditto
from brainfl.federation.ditto import DITTO_MODEL, SITE_PERSONAL, PersonalModel, personal_update
from brainfl.federation.site_training import local_update
from brainfl.model.files import stored_metadata
from brainfl.model.process_cache import initial_weights, model_for, model_inputs
from brainfl.report.results import DITTO_SITE_FIELDS, PERSONALIZATION_CSV, SITE_CSV
from brainfl.settings.run_settings import settings_from_config, settings_with
from conftest import CLASSES, make_dataset
from inprocess import run_in_process

RUN = {
    "image-size": 16,
    "batch-size": 4,
    "local-epochs": 1,
    "num-server-rounds": 2,
    "ditto-lambda": 0.1,
    "calibrate": False,
}


@dataclasses.dataclass
class DittoRun:
    """An in-process run of 2 sites and 2 rounds with Ditto, and what its sites kept and sent."""

    grid: object
    output: object
    replies: list
    starts: list  # (site, round-start weights of the personal model) per call
    kept: list  # (site, kept weights) per call


@pytest.fixture(scope="module")
def ditto_run(tmp_path_factory) -> DittoRun:
    root = tmp_path_factory.mktemp("ditto")
    data, output = make_dataset(root / "data"), root / "run"
    replies, starts, kept = [], [], []
    start, keep = PersonalModel.start, PersonalModel.keep

    def recorded_start(self, received):
        weights = start(self, received)
        starts.append((self.site_id, [np.array(w) for w in weights]))
        return weights

    def recorded_keep(self, weights):
        kept.append((self.site_id, [np.array(w) for w in weights]))
        keep(self, weights)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PersonalModel, "start", recorded_start)
        patch.setattr(PersonalModel, "keep", recorded_keep)
        grid = run_in_process(
            2, {**RUN, "data-dir": str(data), "output-dir": str(output)}, tap=replies.append
        )
    return DittoRun(grid, output, replies, starts, kept)


def flat(weights) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def test_the_personal_model_survives_between_rounds_in_context_state(ditto_run):
    first_round = [m for m in ditto_run.grid.sent if m.metadata.message_type == MessageType.TRAIN][:2]
    received = first_round[0].content["arrays"].to_numpy_ndarrays()
    assert len(ditto_run.starts) == len(ditto_run.kept) == 4  # 2 sites x 2 rounds
    for site in (0, 1):
        starts = [w for s, w in ditto_run.starts if s == site]
        kept = [w for s, w in ditto_run.kept if s == site]
        np.testing.assert_array_equal(flat(starts[0]), flat(received))  # round 1: the global start
        np.testing.assert_array_equal(flat(starts[1]), flat(kept[0]))  # round 2: what round 1 kept
        context = ditto_run.grid.contexts[1000 + site]
        np.testing.assert_array_equal(flat(context.state[SITE_PERSONAL].to_numpy_ndarrays()), flat(kept[1]))
    assert not np.allclose(flat(ditto_run.kept[0][1]), flat(received))  # it trained


def test_the_personal_model_never_appears_in_a_reply(ditto_run):
    personal = [flat(w) for _, w in ditto_run.kept]
    train = [r for r in ditto_run.replies if r.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 4
    for reply in ditto_run.replies:
        content = reply.content
        assert set(content.array_records) <= {"arrays", "test-copies"}  # the global update only
        for record in content.array_records.values():
            arrays = record.to_numpy_ndarrays()
            sent = flat(arrays) if arrays else np.empty(0)
            assert all(sent.shape != p.shape or not np.allclose(sent, p) for p in personal)
        for metrics in content.metric_records.values():
            assert all(isinstance(value, int | float) for value in metrics.values())
    for reply in train:
        metrics = reply.content["metrics"]
        assert all(0.0 <= metrics[field] <= 1.0 for field in DITTO_SITE_FIELDS[1:])


def test_the_coordinator_records_the_personal_scores_and_the_site_saves_its_model(ditto_run):
    with open(ditto_run.output / SITE_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["round"], row["site"]) for row in rows] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert all(row[field] != "" for row in rows for field in DITTO_SITE_FIELDS)
    with open(ditto_run.output / PERSONALIZATION_CSV, newline="") as handle:
        answers = {row["site"]: row for row in csv.DictReader(handle)}
    last_round = {row["site"]: row for row in rows if row["round"] == "2"}
    for site in ("0", "1"):  # after the last round: the same personal model, scored again
        assert float(answers[site]["ditto_accuracy"]) == pytest.approx(
            float(last_round[site]["ditto_val_accuracy"]), abs=1e-5
        )
        gain = float(answers[site]["ditto_accuracy"]) - float(answers[site]["global_accuracy"])
        assert float(answers[site]["gain_accuracy"]) == pytest.approx(gain, abs=1e-5)
        path = ditto_run.output / "sites" / f"site_{site}" / DITTO_MODEL
        assert stored_metadata(path)["ditto_lambda"] == pytest.approx(0.1)
    assert not (ditto_run.output / "sites" / "site_0" / "personalized_model.keras").exists()


@pytest.fixture(scope="module")
def one_site(tmp_path_factory):
    """Settings, the model, the site and its inputs of a tiny one-site federation (random images)."""
    data = make_dataset(tmp_path_factory.mktemp("site") / "data", train_per_class=6)
    settings = settings_from_config({**RUN, "data-dir": str(data), "batch-size": 8})
    site = site_data(settings, {"partition-id": 0, "num-partitions": 1}, CLASSES)
    bundle = model_for(settings, CLASSES)
    return settings, bundle, site, model_inputs(settings.model, bundle, site.train)


def personal_from(one_site, state, received, ditto_lambda: float) -> list[np.ndarray]:
    settings, bundle, site, inputs = one_site
    options = {"learning_rate": 0.01, "server_round": 1, "epochs": 2}
    personal_update(settings, bundle, site, inputs, state, received, ditto_lambda=ditto_lambda, **options)
    return state[SITE_PERSONAL].to_numpy_ndarrays()


def test_lambda_zero_is_local_training_from_the_global_start(one_site):
    settings, bundle, site, inputs = one_site
    received = initial_weights(settings, CLASSES)
    personal = personal_from(one_site, RecordDict(), received, 0.0)
    bundle.trainable.set_weights(received)
    local_update(
        settings, bundle, inputs, site.train.labels, learning_rate=0.01, server_round=1, site_id=0, epochs=2
    )
    for got, want in zip(personal, bundle.trainable.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_large_lambda_pulls_the_personal_model_to_the_global_one(one_site):
    settings, bundle, _, _ = one_site
    received = initial_weights(settings, CLASSES)
    trained = [variable.trainable for variable in bundle.trainable.weights]
    away = [w + np.float32(0.05) if t else w for w, t in zip(received, trained, strict=True)]

    def distance(weights) -> float:
        pairs = zip(weights, received, trained, strict=True)
        return float(np.linalg.norm(flat(w - r for w, r, t in pairs if t)))

    moved = {}
    for ditto_lambda in (0.0, 1000.0):
        state = RecordDict()
        PersonalModel(state, 0).keep(away)  # a personal model far from the global one
        moved[ditto_lambda] = distance(personal_from(one_site, state, received, ditto_lambda))
    assert moved[1000.0] < 0.5 * distance(away)
    assert moved[1000.0] < 0.5 * moved[0.0]


@pytest.mark.parametrize("value", [-0.1, "abc", float("nan")])
def test_a_bad_ditto_lambda_is_refused_in_one_line(value):
    with pytest.raises(BrainFLError, match="'ditto-lambda'") as caught:
        settings_with(ditto_lambda=value)
    assert "\n" not in str(caught.value)


def test_ditto_is_off_at_zero_and_on_above():
    assert not ditto.enabled(settings_with())
    assert ditto.enabled(settings_with(ditto_lambda=0.5))
