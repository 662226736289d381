"""Personalization: FedBN keeps each site's BatchNorm layers; after the last round each site fine-tunes,
saves and scores its own model, and only the scores reach the server."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType, RecordDict

import brainfl.federation.client_app as client_app
from brainfl.core.errors import BrainFLError
from brainfl.data.sites import site_data
from brainfl.evaluation.metrics import held_out_metrics
from brainfl.federation import personalization, site_round
from brainfl.federation.bookkeeping import weighted_average
from brainfl.federation.fedbn import SITE_BATCHNORM, SiteBatchNorm, batchnorm_mask
from brainfl.federation.personalization import PERSONALIZE, PERSONALIZED_MODEL, SITE_PRIOR_MODEL
from brainfl.federation.setup import QUERY
from brainfl.federation.site_training import local_update
from brainfl.model.files import FINAL_MODEL, load_model, stored_metadata
from brainfl.model.process_cache import model_for
from brainfl.model.training import predict_proba
from brainfl.report.results import PERSONALIZATION_CSV, read_rows
from brainfl.settings.run_settings import settings_from_config, settings_with
from conftest import CLASSES
from inprocess import NODE_BASE, run_in_process, train_messages
from test_federation_setup import run_coordinated
from test_secure_aggregation import SECAGG_RUN


def recording_local_update(monkeypatch) -> dict[tuple[int, int], list[np.ndarray]]:
    """Record, per (site, round), the weights a site's model holds when its local training starts."""
    started: dict[tuple[int, int], list[np.ndarray]] = {}
    original = site_round.local_update

    def local_update(settings, bundle, inputs, labels, **options):
        started[options["site_id"], options["server_round"]] = bundle.trainable.get_weights()
        return original(settings, bundle, inputs, labels, **options)

    monkeypatch.setattr(site_round, "local_update", local_update)
    return started


def test_fedbn_keeps_each_sites_batchnorm_out_of_the_aggregate(tmp_path, monkeypatch):
    """2 rounds, 2 sites with different images: each site starts round 2 with the server's average of
    every other array and its own round-1 BatchNorm, and keeps what its own training produced."""
    started = recording_local_update(monkeypatch)
    grid, replies, _ = run_coordinated(tmp_path, {"fedbn": True, "calibrate": False})
    mask = batchnorm_mask(model_for(settings_with(image_size=16), CLASSES).trainable)
    assert 0 < sum(mask) < len(mask)
    trained = {  # (site, round) -> the weights the site replied with
        (int(reply.content["metrics"]["site-id"]), round_): reply.content["arrays"].to_numpy_ndarrays()
        for round_, pair in ((1, replies[2:4]), (2, replies[4:6]))
        for reply in pair
    }
    sent = train_messages(grid)
    averaged = {
        round_: message.content["arrays"].to_numpy_ndarrays()
        for round_, message in ((1, sent[0]), (2, sent[2]))
    }
    kept = {}
    for site in (0, 1):
        own = grid.contexts[NODE_BASE + site].state[SITE_BATCHNORM].to_numpy_ndarrays()
        mine = [array for array, is_bn in zip(trained[site, 2], mask, strict=True) if is_bn]
        assert all(np.array_equal(a, b) for a, b in zip(own, mine, strict=True))  # its own training's
        kept[site] = own
        for index, is_bn in enumerate(mask):
            start = started[site, 2][index]
            if is_bn:  # round 2 starts from its own round-1 BatchNorm, not the average
                np.testing.assert_array_equal(start, trained[site, 1][index])
                assert not np.allclose(start, averaged[2][index])
            else:  # and from the server's average of everything else
                np.testing.assert_array_equal(start, averaged[2][index])
            np.testing.assert_array_equal(started[site, 1][index], averaged[1][index])  # round 1: received
    assert not any(np.allclose(a, b) for a, b in zip(kept[0], kept[1], strict=True))
    # The global model's BatchNorm is the sites' (example-weighted) average, as every other array.
    final = load_model(tmp_path / "run" / FINAL_MODEL).model.get_weights()
    examples = [int(reply.content["metrics"]["num-examples"]) for reply in replies[4:6]]
    sites = [int(reply.content["metrics"]["site-id"]) for reply in replies[4:6]]
    expected = weighted_average([trained[site, 2] for site in sites], examples)
    for got, want in zip(final, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # With FedBN (and no fine-tuning) each site saves the global model with its own BatchNorm.
    for site in (0, 1):
        saved = load_model(
            tmp_path / "run" / "sites" / f"site_{site}" / PERSONALIZED_MODEL
        ).model.get_weights()
        own = [array for array, is_bn in zip(saved, mask, strict=True) if is_bn]
        assert all(np.array_equal(a, b) for a, b in zip(own, kept[site], strict=True))
        assert all(np.array_equal(a, b) for a, b, bn in zip(saved, final, mask, strict=True) if not bn)


def test_with_fraction_train_a_site_starts_from_its_own_batchnorm_once_it_has_trained(tmp_path, monkeypatch):
    """fraction-train 0.5: one site per round; each trains from the received BatchNorm the first time and
    from its own after; every connected site, trained or not, saves its model at the end."""
    started = recording_local_update(monkeypatch)
    grid, replies, _ = run_coordinated(
        tmp_path, {"fedbn": True, "calibrate": False, "fraction-train": 0.5, "num-server-rounds": 3}
    )
    mask = batchnorm_mask(model_for(settings_with(image_size=16), CLASSES).trainable)
    received = [message.content["arrays"].to_numpy_ndarrays() for message in train_messages(grid)]
    own: dict[int, list[np.ndarray]] = {}  # each site's weights from its latest training
    for round_, reply in enumerate((r for r in replies if r.metadata.message_type == MessageType.TRAIN), 1):
        site = int(reply.content["metrics"]["site-id"])
        for index, is_bn in enumerate(mask):
            expected = own[site][index] if is_bn and site in own else received[round_ - 1][index]
            np.testing.assert_array_equal(started[site, round_][index], expected)
        own[site] = reply.content["arrays"].to_numpy_ndarrays()
    for site in (0, 1):
        assert (tmp_path / "run" / "sites" / f"site_{site}" / PERSONALIZED_MODEL).is_file()


def test_sites_fine_tune_save_and_send_only_their_scores(tmp_path, monkeypatch):
    """fine-tune-epochs=1: one personalize query per site after calibration, fine-tuning at
    fine-tune-learning-rate; numbers only; the saved model scores on the site's held-out split what
    the site reported."""
    rates = []

    def recording(settings, bundle, inputs, labels, **options):
        rates.append(options["learning_rate"])
        return local_update(settings, bundle, inputs, labels, **options)

    monkeypatch.setattr(personalization, "local_update", recording)
    run_config = {"num-server-rounds": 1, "fine-tune-epochs": 1, "fine-tune-learning-rate": 0.0007}
    grid, replies, _ = run_coordinated(tmp_path, run_config)
    assert rates == pytest.approx([0.0007, 0.0007])  # one fine-tuning per site
    run = tmp_path / "run"
    sent = [message.metadata.message_type for message in grid.sent]
    assert sent == [MessageType.QUERY] * 2 + [MessageType.TRAIN] * 2 + [MessageType.QUERY] * 4
    asked = [m.content["config"][QUERY] for m in grid.sent[-4:]]
    assert asked == ["calibration", "calibration", PERSONALIZE, PERSONALIZE]
    assert {m.metadata.dst_node_id for m in grid.sent[-2:]} == set(grid.get_node_ids())
    for answer in replies[-2:]:
        assert list(answer.content.keys()) == ["metrics"]  # no arrays: the model stays at the site
        assert all(isinstance(value, int | float) for value in answer.content["metrics"].values())
    rows = read_rows(run / PERSONALIZATION_CSV)
    assert [row["site"] for row in rows] == ["0", "1"]
    settings = settings_from_config(grid.run_config)
    final = load_model(run / FINAL_MODEL)
    for row in rows:
        site = int(row["site"])
        held_out = site_data(settings, grid.contexts[NODE_BASE + site].node_config, CLASSES).val
        assert int(row["held_out_images"]) == len(held_out) > 0 and row["fine_tune_epochs"] == "1"
        path = run / "sites" / f"site_{site}" / PERSONALIZED_MODEL
        personalized = load_model(path)
        assert stored_metadata(path)["site"] == site and personalized.temperature == 1.0
        for model, stage in ((personalized, "personalized"), (final, "global")):
            probabilities = predict_proba(model.model, held_out.images)  # (without the final model's T)
            scores = held_out_metrics(held_out.labels, probabilities, CLASSES)
            assert float(row[f"{stage}_accuracy"]) == pytest.approx(scores["val_accuracy"], abs=1e-6)
            assert float(row[f"{stage}_balanced_accuracy"]) == pytest.approx(
                scores["val_balanced_accuracy"], abs=1e-6
            )
        gain = float(row["personalized_balanced_accuracy"]) - float(row["global_balanced_accuracy"])
        assert float(row["gain_balanced_accuracy"]) == pytest.approx(gain, abs=1e-5)
    assert "personalization: 2 sites saved their personalized models" in (run / "logs/server.log").read_text()
    page = (run / "report.html").read_text()
    assert "Global against personalized model" in page and "gain balanced accuracy" in page


def test_site_prior_folds_each_sites_class_mix_into_its_copy_against_the_federations(tmp_path):
    """site-prior=true: the query carries the federation's class mix (partition.csv summed); each site
    saves the global model with its own mix folded in, whose probabilities are Bayes' rule on the global
    model's, and reports that copy's held-out scores (stage site_prior)."""
    grid, _, _ = run_coordinated(tmp_path, {"num-server-rounds": 1, "site-prior": True})
    run = tmp_path / "run"
    partition = read_rows(run / "partition.csv")
    counts = np.array([sum(int(row[name]) for row in partition) for name in CLASSES]) + 1.0
    reference = counts / counts.sum()
    query = grid.sent[-1].content["config"]
    assert query[QUERY] == PERSONALIZE and query["site-prior"]
    np.testing.assert_allclose(query["reference-prior"], reference)
    settings = settings_from_config(grid.run_config)
    final = load_model(run / FINAL_MODEL)
    rows = read_rows(run / PERSONALIZATION_CSV)
    assert [row["site"] for row in rows] == ["0", "1"]
    for row in rows:
        site = site_data(settings, grid.contexts[NODE_BASE + int(row["site"])].node_config, CLASSES)
        path = run / "sites" / f"site_{row['site']}" / SITE_PRIOR_MODEL
        mix = np.bincount(site.train.labels, minlength=len(CLASSES)) + 1.0
        mix /= mix.sum()
        np.testing.assert_allclose(stored_metadata(path)["site_prior"]["site"], mix)
        expected = predict_proba(final.model, site.val.images) * mix / reference
        expected /= expected.sum(1, keepdims=True)
        folded = predict_proba(load_model(path).model, site.val.images)
        np.testing.assert_allclose(folded, expected, rtol=1e-3, atol=1e-6)
        scores = held_out_metrics(site.val.labels, folded, CLASSES)
        assert float(row["site_prior_accuracy"]) == pytest.approx(scores["val_accuracy"], abs=1e-6)
        gain = float(row["site_prior_accuracy"]) - float(row["global_accuracy"])
        assert float(row["gain_accuracy"]) == pytest.approx(gain, abs=1e-5)
    assert "site-prior accuracy" in (run / "report.html").read_text()  # the report's table shows the stage


def test_a_site_keeps_its_own_batchnorm_in_its_context_state():
    model = model_for(settings_with(image_size=16), CLASSES).trainable
    weights = model.get_weights()
    mask = batchnorm_mask(model)
    state = RecordDict()
    first = SiteBatchNorm(True, model, state, 0)
    assert first.apply(weights) == weights and SITE_BATCHNORM not in state  # nothing kept: the received
    trained = [array + 1.0 for array in weights]
    first.keep(trained)
    received = [array - 1.0 for array in weights]
    applied = SiteBatchNorm(True, model, state, 0).apply(received)  # the next message, a fresh process
    for array, new, old, is_bn in zip(applied, trained, received, mask, strict=True):
        np.testing.assert_array_equal(array, new if is_bn else old)
    off = SiteBatchNorm(False, model, state, 0)
    assert off.apply(received) == received
    off.keep(weights)
    assert np.array_equal(state[SITE_BATCHNORM].to_numpy_ndarrays()[0], trained[mask.index(True)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"fedbn": True, "norm": "group"}, "'fedbn': FedBN keeps each site's own BatchNorm layers"),
        (
            {"fedbn": True, "model": "vgg16"},
            r"needs model=cnn or rescnn with norm=batch and no dp \(got model=vgg16",
        ),
        ({"fedbn": True, "norm": "group", "dp": "server-fixed"}, "norm=group, dp=server-fixed"),
        ({"fine-tune-epochs": -1}, r"'fine-tune-epochs' must be >= 0 \(0: off\), got -1"),
        ({"fine-tune-epochs": 1.5}, "'fine-tune-epochs': expected int"),
        ({"fine-tune-learning-rate": 0.0}, "'fine-tune-learning-rate' must be"),
    ],
)
def test_bad_personalization_settings_are_refused_with_one_line(config, message):
    with pytest.raises(BrainFLError, match=message) as refused:
        settings_from_config(config)
    assert "\n" not in str(refused.value)


def test_fedbn_with_secagg_keeps_each_sites_batchnorm(tmp_path, monkeypatch):
    """On SecAgg+'s legacy path, too, a site starts round 2 from its own round-1 BatchNorm."""
    started = recording_local_update(monkeypatch)
    trained: dict[tuple[int, int], list[np.ndarray]] = {}
    original = client_app.train_site

    def recording_train_site(weights, config, context, control=None):
        new_weights, metrics, update = original(weights, config, context, control)
        trained[int(metrics["site-id"]), int(config["global-round"])] = [w.copy() for w in new_weights]
        return new_weights, metrics, update

    monkeypatch.setattr(client_app, "train_site", recording_train_site)
    changes = {
        "num-partitions": 2,
        "wait-for-sites": 2,
        "image-size": 16,
        "num-server-rounds": 2,
        "local-epochs": 1,
    }
    config = {**SECAGG_RUN, **changes, "fedbn": True, "calibrate": False, "output-dir": str(tmp_path)}
    grid = run_in_process(2, config)
    mask = batchnorm_mask(model_for(settings_with(image_size=16), CLASSES).trainable)
    for site in (0, 1):
        for index in (i for i, is_bn in enumerate(mask) if is_bn):
            np.testing.assert_array_equal(started[site, 2][index], trained[site, 1][index])
        own = grid.contexts[NODE_BASE + site].state[SITE_BATCHNORM].to_numpy_ndarrays()
        mine = [array for array, is_bn in zip(trained[site, 2], mask, strict=True) if is_bn]
        assert all(np.array_equal(a, b) for a, b in zip(own, mine, strict=True))
    assert [row["round"] for row in read_rows(tmp_path / "federated_learning_results.csv")] == ["0", "1", "2"]
    assert (tmp_path / "sites" / "site_1" / PERSONALIZED_MODEL).is_file()
