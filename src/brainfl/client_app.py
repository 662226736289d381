"""Flower ClientApp: one hospital site training on, and evaluating, its own scans.

Images never leave the site: a reply carries only model weights and metrics.
Each message is handled with the site's log file attached
(``logs/client_<site>.log``); a data problem fails the site's round with a
one-line reason that also reaches the server log.

One training function serves both of Flower's paths: the Message API's
train messages, and the legacy ``FitIns`` messages of the SecAgg+ workflow
(``secagg=true``), where Flower's ``secaggplus_mod`` masks the reply. With
client-side DP, Flower's clipping mods clip the update before it leaves.
The ``attack`` setting (tests and benchmarks only) makes the first
``attack-sites`` sites send poisoned updates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from brainfl.config import RunSettings, settings_from_config
from brainfl.errors import BrainFLError
from brainfl.logs import LOG, log_to_file
from brainfl.metrics import classification_metrics
from brainfl.pipeline import SiteData, model_for, model_inputs, site_data
from brainfl.training import predict_proba, recalibrate_batchnorm, site_class_prior, train

LEGACY_PARAMETERS = "fitins.parameters"
ATTACK_SCALE = 10.0


def privacy_mods(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side clipping mod for train messages that carry a clipping norm."""
    config = msg.content.config_records.get("config", {})
    if msg.metadata.message_type != MessageType.TRAIN or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    adaptive = str(context.run_config.get("dp", "")).endswith("adaptive")
    return (adaptiveclipping_mod if adaptive else fixedclipping_mod)(msg, context, call_next)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of the SecAgg+ workflow (others pass through)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[secure_aggregation_mod, privacy_mods])
SITE_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s:,;'\"()]+")


def redact_paths(text: str) -> str:
    """Replace each file path in ``text`` by ``<site>/`` and its last component."""
    return SITE_PATH.sub(lambda match: "<site>/" + re.split(r"[/\\]", match.group().rstrip("/\\"))[-1], text)


def site_log_path(context: Context, settings: RunSettings) -> Path:
    """``<log-dir>/client_<site>.log``: node config ``log-dir``, else the run's output logs."""
    site = context.node_config.get("partition-id", context.node_id)
    log_dir = context.node_config.get("log-dir") or (
        Path(settings.output_dir) / "logs" if settings.output_dir else Path("logs")
    )
    return Path(str(log_dir)).expanduser() / f"client_{site}.log"


@contextmanager
def site_session(config: Mapping[str, Any], context: Context) -> Iterator[tuple[RunSettings, SiteData]]:
    """Settings and local data for one message (its ``config``), with the site log attached."""
    settings = settings_from_config(context.run_config)
    with log_to_file(site_log_path(context, settings)):
        try:
            class_names = tuple(str(config["class-names"]).split(","))
            yield settings, site_data(settings, context.node_config, class_names)
        except BrainFLError as error:
            site = context.node_config.get("partition-id", context.node_id)
            LOG.error("site %s: %s", site, error)
            # The reply reaches the server's log: say what is wrong, not where the site keeps its files.
            raise BrainFLError(f"site {site}: {redact_paths(str(error))}") from None


def attacked(
    settings: RunSettings, site: SiteData, received: list[np.ndarray], trained: list[np.ndarray]
) -> list[np.ndarray]:
    """The update a poisoned site sends (``attack`` setting; the first ``attack-sites`` sites)."""
    if settings.attack == "none" or not 0 <= site.site_id < settings.attack_sites:
        return trained
    LOG.warning(
        "site %d: sending a '%s' update (attack setting, for tests only)", site.site_id, settings.attack
    )
    rng = np.random.default_rng(settings.seed + site.site_id)
    poisoned = []
    for start, end in zip(received, trained, strict=True):
        update = end.astype(np.float64) - start
        if settings.attack == "sign-flip":
            update = -ATTACK_SCALE * update
        elif settings.attack == "noise":
            update = rng.normal(0.0, ATTACK_SCALE * (update.std() + 1e-3), size=update.shape)
        else:  # nan
            update = np.full(update.shape, np.nan)
        poisoned.append((start + update).astype(end.dtype))
    return poisoned


def train_site(
    weights: list[np.ndarray], config: Mapping[str, Any], context: Context
) -> tuple[list[np.ndarray], dict[str, float | int]]:
    """Train ``weights`` on this site's training split; return the new weights and the metrics."""
    with site_session(config, context) as (settings, site):
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()
        bundle = model_for(settings, site.train.class_names)
        bundle.trainable.set_weights(weights)
        server_round = int(config.get("global-round", config.get("server-round", 0)))
        inputs = model_inputs(settings, bundle, site.train)
        metrics = train(
            bundle.trainable,
            inputs,
            site.train.labels,
            epochs=int(config.get("local-epochs", settings.local_epochs)),
            batch_size=settings.batch_size,
            learning_rate=float(config["learning-rate"]),
            weight_decay=settings.weight_decay,
            label_smoothing=settings.label_smoothing,
            seed=settings.seed + 1000 * server_round + max(site.site_id, 0),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            class_prior=site_class_prior(site.train.labels, len(site.train.class_names))
            if settings.balanced_softmax
            else None,
        )
        if settings.precise_bn:
            recalibrate_batchnorm(bundle.trainable, inputs, settings.batch_size)
        LOG.info(
            "site %d round %d: trained on %d images, loss %.4f, accuracy %.4f",
            site.site_id,
            server_round,
            len(site.train),
            metrics["train_loss"],
            metrics["train_accuracy"],
        )
        trained = attacked(settings, site, weights, bundle.trainable.get_weights())
        return trained, {
            **metrics,
            "num-examples": len(site.train),
            "num_train": len(site.train),
            "num_val": len(site.val),
            "site-id": site.site_id,
        }


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's training split."""
    if LEGACY_PARAMETERS in msg.content.array_records:
        return train_legacy_round(msg, context)
    weights, metrics = train_site(msg.content["arrays"].to_numpy_ndarrays(), msg.content["config"], context)
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def train_legacy_round(msg: Message, context: Context) -> Message:
    """The same training for the legacy workflow's ``FitIns`` (the SecAgg+ path)."""
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    weights, metrics = train_site(parameters_to_ndarrays(fit_ins.parameters), fit_ins.config, context)
    fit_res = FitRes(
        status=Status(code=Code.OK, message="ok"),
        parameters=ndarrays_to_parameters(weights),
        num_examples=int(metrics["num-examples"]),
        metrics=metrics,
    )
    return Message(content=compat.fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this site's validation split."""
    with site_session(msg.content["config"], context) as (settings, site):
        evaluation = site.val if len(site.val) else site.train
        bundle = model_for(settings, site.train.class_names)
        bundle.trainable.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        probabilities = predict_proba(bundle.trainable, model_inputs(settings, bundle, evaluation))
        metrics = classification_metrics(evaluation.labels, probabilities, evaluation.class_names)
        LOG.info(
            "site %d round %s: validation accuracy %.4f on %d images",
            site.site_id,
            msg.content["config"]["server-round"],
            metrics["accuracy"],
            len(evaluation),
        )
        reply = MetricRecord(
            {
                "val_loss": metrics["loss"],
                "val_accuracy": metrics["accuracy"],
                "num-examples": len(evaluation),
                "site-id": site.site_id,
            }
        )
    return Message(content=RecordDict({"metrics": reply}), reply_to=msg)
