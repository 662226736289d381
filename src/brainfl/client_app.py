"""Flower ClientApp: one hospital site training on, and evaluating, its own scans.

Images never leave the site: a reply carries only model weights and metrics.
Each message is handled with the site's log file attached
(``logs/client_<site>.log``); a data problem fails the site's round with a
one-line reason that also reaches the server log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from brainfl.config import RunSettings, settings_from_config
from brainfl.errors import BrainFLError
from brainfl.logs import LOG, log_to_file
from brainfl.metrics import classification_metrics
from brainfl.pipeline import SiteData, model_for, model_inputs, site_data
from brainfl.training import predict_proba, train

app = ClientApp()
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
def site_session(msg: Message, context: Context) -> Iterator[tuple[RunSettings, SiteData]]:
    """Settings and local data for one message, with the site log attached."""
    settings = settings_from_config(context.run_config)
    with log_to_file(site_log_path(context, settings)):
        try:
            class_names = tuple(str(msg.content["config"]["class-names"]).split(","))
            yield settings, site_data(settings, context.node_config, class_names)
        except BrainFLError as error:
            site = context.node_config.get("partition-id", context.node_id)
            LOG.error("site %s: %s", site, error)
            # The reply reaches the server's log: say what is wrong, not where the site keeps its files.
            raise BrainFLError(f"site {site}: {redact_paths(str(error))}") from None


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's training split."""
    with site_session(msg, context) as (settings, site):
        config = msg.content["config"]
        bundle = model_for(settings, site.train.class_names)
        bundle.trainable.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        server_round = int(config.get("global-round", config["server-round"]))
        metrics = train(
            bundle.trainable,
            model_inputs(settings, bundle, site.train),
            site.train.labels,
            epochs=int(config.get("local-epochs", settings.local_epochs)),
            batch_size=settings.batch_size,
            learning_rate=float(config["learning-rate"]),
            weight_decay=settings.weight_decay,
            label_smoothing=settings.label_smoothing,
            seed=settings.seed + 1000 * server_round + max(site.site_id, 0),
        )
        LOG.info(
            "site %d round %d: trained on %d images, loss %.4f, accuracy %.4f",
            site.site_id,
            server_round,
            len(site.train),
            metrics["train_loss"],
            metrics["train_accuracy"],
        )
        reply = MetricRecord(
            {
                **metrics,
                "num-examples": len(site.train),
                "num_train": len(site.train),
                "num_val": len(site.val),
                "site-id": site.site_id,
            }
        )
        content = RecordDict({"arrays": ArrayRecord(bundle.trainable.get_weights()), "metrics": reply})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this site's validation split."""
    with site_session(msg, context) as (settings, site):
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
