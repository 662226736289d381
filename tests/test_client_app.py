"""A site's replies: precise BatchNorm statistics, balanced softmax, failure reasons without paths."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl import client_app
from brainfl.client_app import redact_paths
from brainfl.config import settings_from_config
from brainfl.data_loader import find_classes
from brainfl.models import build_cnn
from brainfl.pipeline import site_data
from brainfl.training import recalibrate_batchnorm, site_class_prior, train
from conftest import REPO_ROOT
from inprocess import run_in_process

ONE_ROUND = {
    "data-dir": str(REPO_ROOT / "sample_data"),
    "image-size": 32,
    "num-partitions": 2,
    "num-server-rounds": 1,
    "fraction-evaluate": 0.0,
    "learning-rate": 0.01,
}


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
def test_site_reply_carries_precise_batchnorm_statistics_only_when_enabled(tmp_path, precise):
    config = {
        **ONE_ROUND,
        "output-dir": str(tmp_path),
        "cache-dir": str(tmp_path / "cache"),
        "precise-bn": precise,
    }
    replies = []
    run_in_process(2, config, tap=replies.append)
    settings = settings_from_config(config)
    reply = next(r for r in replies if r.content["metrics"]["site-id"] == 0)
    model = build_cnn(settings.image_size, 1, 4)
    model.set_weights(reply.content["arrays"].to_numpy_ndarrays())
    sent = _moving_statistics(model)
    class_names = tuple(find_classes(REPO_ROOT / "sample_data" / "Training"))
    site = site_data(settings, {"partition-id": 0, "num-partitions": 2}, class_names)
    recalibrate_batchnorm(model, site.train.images, settings.batch_size)
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

    monkeypatch.setattr(client_app, "train", spy_train)
    config = {**ONE_ROUND, "output-dir": str(tmp_path), "cache-dir": str(tmp_path / "cache")}
    run_in_process(2, {**config, "balanced-softmax": balanced})
    if not balanced:
        assert priors == [None, None]
        return
    settings = settings_from_config(config)
    class_names = tuple(find_classes(REPO_ROOT / "sample_data" / "Training"))
    expected = [
        site_class_prior(
            site_data(settings, {"partition-id": i, "num-partitions": 2}, class_names).train.labels, 4
        )
        for i in range(2)
    ]
    assert len(priors) == 2
    for got, want in zip(sorted(priors, key=tuple), sorted(expected, key=tuple), strict=True):
        np.testing.assert_allclose(got, want)
