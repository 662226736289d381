"""A site's training replies: precise BatchNorm statistics, balanced softmax, class counts, and
failure reasons without paths.

The replies come from the project's ClientApp, sent one round of train
messages by an in-process grid (no server).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from brainfl.data.loading import find_classes
from brainfl.data.sites import SiteData, site_data
from brainfl.federation import site_training
from brainfl.federation.bookkeeping import CLASS_COUNT_PREFIX
from brainfl.federation.client_app import redact_paths
from brainfl.federation.strategy import round_settings
from brainfl.model.architectures import build_cnn
from brainfl.model.batch_norm import recalibrate_batchnorm
from brainfl.model.process_cache import initial_weights
from brainfl.model.training import site_class_prior, train
from brainfl.settings.run_settings import settings_from_config
from conftest import REPO_ROOT
from inprocess import InProcessGrid, send_train_round

SITES = 2
ONE_ROUND = {
    "data-dir": str(REPO_ROOT / "sample_data"),
    "image-size": 32,
    "num-partitions": SITES,
    "learning-rate": 0.01,
    "local-epochs": 2,
}
CLASS_NAMES = tuple(find_classes(REPO_ROOT / "sample_data" / "Training"))


def train_replies(run_config: dict) -> dict[int, Message]:
    """Each site's reply to one train message carrying the run's initial weights."""
    settings = settings_from_config(run_config)
    config = round_settings(1, lambda r: settings.training.learning_rate, CLASS_NAMES)
    return send_train_round(InProcessGrid(SITES, run_config), initial_weights(settings, CLASS_NAMES), config)


def local_site(run_config: dict, site: int) -> SiteData:
    settings = settings_from_config(run_config)
    return site_data(settings, {"partition-id": site, "num-partitions": SITES}, CLASS_NAMES)


def test_site_paths_are_reduced_to_their_last_component():
    message = "data folder not found: /srv/hospital-a/Training (expected /srv/hospital-a/Training/x)"
    redacted = redact_paths(message)
    assert redacted == "data folder not found: <site>/Training (expected <site>/x)"
    assert "hospital-a" not in redacted


def test_a_message_without_paths_is_unchanged():
    text = "setting 'model': unknown model 'resnet' (choose one of: cnn, vgg16)"
    assert redact_paths(text) == text


def _moving_statistics(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.non_trainable_weights if "moving" in w.path]


@pytest.mark.parametrize("precise", [True, False])
def test_site_reply_carries_batchnorm_statistics_measured_on_the_sites_own_images(
    tmp_path, monkeypatch, precise
):
    # Without the recalibration step (precise=False) the moving statistics are the ones training
    # accumulated on augmented batches: the comparison below tells the two apart.
    if not precise:
        monkeypatch.setattr(site_training, "recalibrate_batchnorm", lambda *args, **kwargs: 0)
    config = {**ONE_ROUND, "output-dir": str(tmp_path)}
    reply = train_replies(config)[0]
    settings = settings_from_config(config)
    model = build_cnn(settings.model.image_size, 1, len(CLASS_NAMES))
    model.set_weights(reply.content["arrays"].to_numpy_ndarrays())
    sent = _moving_statistics(model)
    recalibrate_batchnorm(model, local_site(config, 0).train.images, settings.training.batch_size)
    matches = all(
        np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(sent, _moving_statistics(model), strict=True)
    )
    assert matches is precise


@pytest.mark.parametrize("balanced", [True, False])
def test_balanced_softmax_trains_each_site_with_its_own_class_prior(tmp_path, monkeypatch, balanced):
    priors = []

    def spy_train(*args, **kwargs):
        priors.append(kwargs["class_prior"])
        return train(*args, **kwargs)

    monkeypatch.setattr(site_training, "train", spy_train)
    config = {**ONE_ROUND, "output-dir": str(tmp_path), "balanced-softmax": balanced}
    train_replies(config)
    if not balanced:
        assert priors == [None] * SITES
        return
    expected = [site_class_prior(local_site(config, i).train.labels, len(CLASS_NAMES)) for i in range(SITES)]
    assert len(priors) == SITES
    for got, want in zip(sorted(priors, key=tuple), sorted(expected, key=tuple), strict=True):
        np.testing.assert_allclose(got, want)


def test_training_reply_carries_the_sites_image_count_per_class(tmp_path):
    config = {**ONE_ROUND, "output-dir": str(tmp_path), "local-epochs": 1}
    for site, reply in train_replies(config).items():
        metrics = reply.content["metrics"]
        counts = [int(metrics[f"{CLASS_COUNT_PREFIX}{i}"]) for i in range(len(CLASS_NAMES))]
        labels = local_site(config, site).train.labels
        assert counts == np.bincount(labels, minlength=len(CLASS_NAMES)).tolist()
        assert sum(counts) == metrics["num_train"] == len(labels) > 0
        per_class = sorted(key for key in metrics if key.startswith(CLASS_COUNT_PREFIX))
        assert per_class == sorted(f"{CLASS_COUNT_PREFIX}{i}" for i in range(len(CLASS_NAMES)))


def test_training_reply_scores_the_received_model_on_the_sites_held_out_split(tmp_path):
    from sklearn.metrics import balanced_accuracy_score, recall_score

    from brainfl.model.training import predict_proba

    # half of each site's images held out, and a once-trained model sent: predictions of several classes
    config = {**ONE_ROUND, "output-dir": str(tmp_path), "local-epochs": 1, "val-fraction": 0.5}
    settings = settings_from_config(config)
    sent = train_replies(config)[0].content["arrays"].to_numpy_ndarrays()
    round_two = round_settings(2, lambda r: settings.training.learning_rate, CLASS_NAMES)
    replies = send_train_round(InProcessGrid(SITES, config), sent, round_two)
    keys = [set(reply.content["metrics"]) for reply in replies.values()]
    assert all(k == keys[0] for k in keys)  # Flower aggregates only replies with the same keys
    received = build_cnn(settings.model.image_size, 1, len(CLASS_NAMES))
    received.set_weights(sent)
    for site, reply in replies.items():
        metrics = reply.content["metrics"]
        held_out = local_site(config, site).val
        predicted = predict_proba(received, held_out.images).argmax(axis=1)  # the CNN takes pixels
        assert metrics["val_balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(held_out.labels, predicted)
        )
        recalls = recall_score(
            held_out.labels, predicted, labels=range(len(CLASS_NAMES)), average=None, zero_division=0
        )
        present = np.bincount(held_out.labels, minlength=len(CLASS_NAMES)) > 0
        for k, name in enumerate(CLASS_NAMES):
            value = metrics[f"val_sensitivity_{name}"]
            assert (value == pytest.approx(recalls[k])) if present[k] else np.isnan(value), name
