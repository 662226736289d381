"""Flower ClientApp: one hospital site training on, and evaluating, its own scans.

Images never leave the site: a reply carries only model weights and metrics.
Each message is handled with the site's log file attached
(``logs/client_<site>.log``); a data problem fails the site's round with a
one-line reason that also reaches the server log. The outermost mod writes
one audit line there for each message received and each reply sent
(:mod:`brainfl.federation.audit`).

One training function serves both of Flower's paths: the Message API's
train messages, and the legacy ``FitIns`` messages of the SecAgg+ workflow
(``secagg=true``), where Flower's ``secaggplus_mod`` masks the reply. With
client-side DP, Flower's clipping mods clip the update before it leaves.
:func:`client_app_with` builds the same app with extra mods in front (the
robustness tests and benchmark install a poisoning mod that way).
A training reply carries the site's image counts per class (its row of the
run's partition table) next to its metrics, and first scores the received
model on the site's held-out split: loss, accuracy, balanced accuracy and
sensitivity per class (of the server's classes, NaN for one the split lacks).
With ``fedbn=true`` the site keeps its own BatchNorm layers between messages
(:mod:`brainfl.federation.fedbn`); with ``ditto-lambda`` > 0 its own personal model, which
never leaves it (:mod:`brainfl.federation.ditto`); the rest of a site's round is
:mod:`brainfl.federation.site_round`'s. A query message is the coordinator's setup query
before round 1, with ``bn-statistics='pooled'`` its query for each round's aggregate's BatchNorm
statistics (:mod:`brainfl.federation.statistics_query`), its calibration, notumor-threshold or
personalization query after the last round (its config's ``query`` says which;
:mod:`brainfl.federation.threshold_query`, :mod:`brainfl.federation.personalization`), or an
evaluation-only run's validation query
(:mod:`brainfl.federation.validation`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG, log_to_file
from brainfl.core.timings import MessageTimer
from brainfl.data.duplicates import has_copy_in, hash_files
from brainfl.data.sites import SiteData, site_data
from brainfl.evaluation.metrics import SITE_PREFIX, site_per_class_prefixes
from brainfl.federation.audit import site_audit_mod
from brainfl.federation.bookkeeping import CLASS_COUNT_PREFIX
from brainfl.federation.calibration_query import CALIBRATION, GRID, site_answer
from brainfl.federation.fedbn import SiteBatchNorm
from brainfl.federation.flower_compat import KEY_CLIPPING_NORM, SECAGG_CONFIGS_KEY
from brainfl.federation.flower_compat import recorddict_compat as compat
from brainfl.federation.personalization import PERSONALIZE, personalize_site
from brainfl.federation.scaffold import CONTROL
from brainfl.federation.setup import QUERY, SETUP, TEST_COPIES, TEST_HASHES
from brainfl.federation.site_round import reply_content, round_update
from brainfl.federation.site_training import class_counts, validate
from brainfl.federation.statistics_query import STATISTICS, site_statistics
from brainfl.federation.threshold_query import THRESHOLD
from brainfl.federation.threshold_query import site_answer as threshold_answer
from brainfl.federation.validation import VALIDATE, query_architecture, site_validation
from brainfl.model.process_cache import model_for, model_inputs
from brainfl.model.training import predict_proba
from brainfl.settings.run_settings import RunSettings, settings_from_config

LEGACY_PARAMETERS = "fitins.parameters"


def privacy_mods(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side clipping mod for train messages that carry a clipping norm."""
    config = msg.content.config_records.get("config", {})
    if msg.metadata.message_type != MessageType.TRAIN or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    adaptive = str(context.run_config.get("dp", "")).endswith("adaptive")
    return (adaptiveclipping_mod if adaptive else fixedclipping_mod)(msg, context, call_next)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of the SecAgg+ workflow (others pass through)."""
    if SECAGG_CONFIGS_KEY in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


STANDARD_MODS = (secure_aggregation_mod, privacy_mods)
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


def site_log_of(context: Context) -> Path:
    """The site's log file for a message (:func:`site_log_path` with the run's settings)."""
    return site_log_path(context, settings_from_config(context.run_config))


audit_mod = site_audit_mod(site_log_of)  # outermost: logs what reaches the site and what leaves it


@contextmanager
def site_session(
    config: Mapping[str, Any],
    context: Context,
    timer: MessageTimer | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Iterator[tuple[RunSettings, SiteData]]:
    """Settings (the run's, with ``overrides``) and local data for one message (its ``config``), with the
    site log attached."""
    settings = settings_from_config({**context.run_config, **(overrides or {})})
    timer = timer or MessageTimer()
    with log_to_file(site_log_path(context, settings)):
        try:
            class_names = tuple(str(config["class-names"]).split(","))
            with timer.phase("data"):
                site = site_data(settings, context.node_config, class_names)
            yield settings, site
        except BrainFLError as error:
            site = context.node_config.get("partition-id", context.node_id)
            LOG.error("site %s: %s", site, error)
            # The reply reaches the server's log: say what is wrong, not where the site keeps its files.
            raise BrainFLError(f"site {site}: {redact_paths(str(error))}") from None


def train_site(
    weights: list[np.ndarray],
    config: Mapping[str, Any],
    context: Context,
    control: list[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], dict[str, float | int], list[np.ndarray] | None]:
    """Score the received ``weights`` (with FedBN, the site's own BatchNorm on top) on this site's
    validation split, then train them on its training split
    (:func:`brainfl.federation.site_round.round_update`, with Ditto's personal model too); return
    the new weights, the metrics (with each phase's seconds) and, given the server's SCAFFOLD
    ``control``, the site's control update (:mod:`brainfl.federation.scaffold`)."""
    timer = MessageTimer()
    with site_session(config, context, timer) as (settings, site):
        with timer.phase("model"):
            bundle = model_for(settings, site.train.class_names)
            batchnorm = SiteBatchNorm(
                settings.federation.fedbn, bundle.trainable, context.state, site.site_id
            )
            bundle.trainable.set_weights(batchnorm.apply(weights))
        server_round = int(config.get("global-round", config.get("server-round", 0)))
        with timer.phase("validation"):
            received = validate(settings.model, bundle, site)  # every reply has the same metric keys
        inputs = model_inputs(settings.model, bundle, site.train)
        with timer.phase("training"):  # (SCAFFOLD's gradient pass and Ditto's steps count as training)
            result = round_update(
                settings,
                bundle,
                site,
                inputs,
                context.state,
                learning_rate=float(config["learning-rate"]),
                server_round=server_round,
                epochs=int(config.get("local-epochs", settings.training.local_epochs)),
                proximal_mu=float(config.get("proximal-mu", 0.0)),
                control=control,
            )
        metrics = result.metrics
        LOG.info(
            "site %d round %d: trained on %d images, loss %.4f, accuracy %.4f; "
            "the received model's validation %s",
            site.site_id,
            server_round,
            len(site.train),
            metrics["train_loss"],
            metrics["train_accuracy"],
            held_out_summary(received),
        )
        LOG.info("site %d round %d seconds: %s", site.site_id, server_round, timer.summary())
        batchnorm.keep(result.weights)
        replied = {**metrics, **received, **site_counts(site), **timer.metrics()}
        return result.weights, replied, result.control_update


def site_counts(site: SiteData) -> dict[str, int]:
    """The site's id, image counts and training images per class, as sent with every training reply."""
    counts = class_counts(site.train.labels, len(site.train.class_names))
    return {
        "num-examples": len(site.train),
        "num_train": len(site.train),
        "num_val": len(site.val),
        "site-id": site.site_id,
        **{f"{CLASS_COUNT_PREFIX}{index}": count for index, count in enumerate(counts)},
    }


def train_round(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's training split."""
    if LEGACY_PARAMETERS in msg.content.array_records:
        return train_legacy_round(msg, context)
    control = msg.content[CONTROL].to_numpy_ndarrays() if CONTROL in msg.content.array_records else None
    weights, metrics, update = train_site(
        msg.content["arrays"].to_numpy_ndarrays(), msg.content["config"], context, control
    )
    return Message(content=reply_content(weights, metrics, update), reply_to=msg)


def train_legacy_round(msg: Message, context: Context) -> Message:
    """The same training for the legacy workflow's ``FitIns`` (the SecAgg+ path)."""
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    weights, metrics, _ = train_site(parameters_to_ndarrays(fit_ins.parameters), fit_ins.config, context)
    fit_res = FitRes(
        status=Status(code=Code.OK, message="ok"),
        parameters=ndarrays_to_parameters(weights),
        num_examples=int(metrics["num-examples"]),
        metrics=metrics,
    )
    return Message(content=compat.fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)


def held_out_summary(metrics: Mapping[str, float]) -> str:
    """The site's log text of :func:`validate`'s metrics (``nan``: a class its split lacks)."""
    per_class = [
        f"{prefix.removeprefix(SITE_PREFIX).rstrip('_')}: "
        + ", ".join(
            f"{key.removeprefix(prefix)} {value:.4f}"
            for key, value in metrics.items()
            if key.startswith(prefix)
        )
        for prefix in site_per_class_prefixes()
    ]
    return (
        f"accuracy {metrics['val_accuracy']:.4f}, balanced accuracy {metrics['val_balanced_accuracy']:.4f}"
        f" ({'; '.join(per_class)})"
    )


def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this site's validation split (``fraction-evaluate`` > 0)."""
    with site_session(msg.content["config"], context) as (settings, site):
        bundle = model_for(settings, site.train.class_names)
        batchnorm = SiteBatchNorm(settings.federation.fedbn, bundle.trainable, context.state, site.site_id)
        bundle.trainable.set_weights(batchnorm.apply(msg.content["arrays"].to_numpy_ndarrays()))
        metrics = validate(settings.model, bundle, site)
        LOG.info(
            "site %d round %s: validation %s",
            site.site_id,
            msg.content["config"]["server-round"],
            held_out_summary(metrics),
        )
        evaluated = len(site.val) or len(site.train)
        reply = MetricRecord({**metrics, "num-examples": evaluated, "site-id": site.site_id})
    return Message(content=RecordDict({"metrics": reply}), reply_to=msg)


def setup_round(msg: Message, context: Context) -> Message:
    """Answer the coordinator's setup query: this site's counts and which test images it holds.

    Only indices into the coordinator's test list leave the site, never a hash of its own scans.
    """
    with site_session(msg.content["config"], context) as (_settings, site):
        copies = np.empty(0, dtype=np.int64)
        if TEST_HASHES in msg.content.array_records:
            test_hashes = msg.content[TEST_HASHES].to_numpy_ndarrays()[0]
            own = hash_files(site.folder, [*site.train.files, *site.val.files])
            copies = np.flatnonzero(has_copy_in(test_hashes, own)).astype(np.int64)
            LOG.info(
                "site %d: %d of the coordinator's %d test images have a copy among its %d scans",
                site.site_id,
                len(copies),
                len(test_hashes),
                len(own),
            )
        content = RecordDict({"metrics": MetricRecord(site_counts(site)), TEST_COPIES: ArrayRecord([copies])})
    return Message(content=content, reply_to=msg)


def calibration_round(msg: Message, context: Context) -> Message:
    """Answer the coordinator's calibration query: the final model's summed NLL on this site's validation
    split at each temperature asked, and the split's size (:mod:`brainfl.federation.calibration_query`)."""
    config = msg.content["config"]
    with site_session(config, context) as (settings, site):
        probabilities = validation_probabilities(msg, settings, site)
        answer = site_answer(site.site_id, site.val.labels, probabilities, list(config[GRID]))
    return Message(content=RecordDict({"metrics": answer}), reply_to=msg)


def validation_probabilities(msg: Message, settings: RunSettings, site: SiteData) -> np.ndarray:
    """The received model's probabilities on this site's validation split (none without one: never the
    training images, which the model fitted too confidently)."""
    if not len(site.val):
        return np.empty((0, len(site.val.class_names)), dtype=np.float32)
    bundle = model_for(settings, site.train.class_names)
    bundle.trainable.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    return predict_proba(bundle.trainable, model_inputs(settings.model, bundle, site.val))


def threshold_round(msg: Message, context: Context) -> Message:
    """Answer the coordinator's notumor-threshold query: counts of missed tumors and false alarms on this
    site's validation split per threshold (:mod:`brainfl.federation.threshold_query`)."""
    config = msg.content["config"]
    with site_session(config, context) as (settings, site):
        probabilities = validation_probabilities(msg, settings, site)
        answer = threshold_answer(site.site_id, site.val.labels, probabilities, site.val.class_names, config)
    return Message(content=RecordDict({"metrics": answer}), reply_to=msg)


def statistics_round(msg: Message, context: Context) -> Message:
    """Answer the coordinator's BatchNorm statistics query: the received model's BatchNorm input
    statistics over this site's training images (:mod:`brainfl.federation.statistics_query`)."""
    with site_session(msg.content["config"], context) as (settings, site):
        bundle = model_for(settings, site.train.class_names)
        inputs = model_inputs(settings.model, bundle, site.train)
        weights = msg.content["arrays"].to_numpy_ndarrays()
        batch_size = settings.training.batch_size
        content = site_statistics(bundle.trainable, weights, inputs, batch_size, site.site_id)
    return Message(content=content, reply_to=msg)


def personalization_round(msg: Message, context: Context) -> Message:
    """Answer the coordinator's personalization query: fine-tune the final model here, save it here, and
    reply with its held-out scores before and after (:mod:`brainfl.federation.personalization`)."""
    config = msg.content["config"]
    with site_session(config, context) as (settings, site):
        weights = msg.content["arrays"].to_numpy_ndarrays()
        answer = personalize_site(settings, site, weights, config, context)
    return Message(content=RecordDict({"metrics": answer}), reply_to=msg)


def validation_round(msg: Message, context: Context) -> Message:
    """Answer an evaluation-only run's query: score the model sent on this site's scans, reply with counts
    (:mod:`brainfl.federation.validation`)."""
    config = msg.content["config"]
    with site_session(config, context, overrides=query_architecture(config)) as (settings, site):
        answer = site_validation(settings, site, msg.content)
    return Message(content=answer, reply_to=msg)


QUERIES = {
    SETUP: setup_round,
    CALIBRATION: calibration_round,
    THRESHOLD: threshold_round,
    PERSONALIZE: personalization_round,
    STATISTICS: statistics_round,
    VALIDATE: validation_round,
}


def query_round(msg: Message, context: Context) -> Message:
    """The coordinator's queries: ``setup`` before round 1, ``calibration``, ``notumor-threshold`` and
    ``personalize`` after."""
    asked = str(msg.content["config"].get(QUERY, SETUP))
    if asked not in QUERIES:
        raise BrainFLError(f"unknown query '{asked}' (this site answers: {', '.join(QUERIES)})")
    return QUERIES[asked](msg, context)


def client_app_with(*extra_mods) -> ClientApp:
    """The site's ClientApp, with ``extra_mods`` applied before Flower's SecAgg+ and DP mods (all inside
    the audit mod, which logs what reaches the site and what leaves it)."""
    client_app = ClientApp(mods=[audit_mod, *extra_mods, *STANDARD_MODS])
    client_app.train()(train_round)
    client_app.evaluate()(evaluate_round)
    client_app.query()(query_round)
    return client_app


app = client_app_with()
