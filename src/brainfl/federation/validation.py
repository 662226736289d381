"""Evaluation-only federation: saved models scored at every site, numbers only leaving the sites.

With ``validate-models`` set (``./run.sh --validate MODEL``) the ServerApp trains
nothing. It waits for the sites as before round 1, then sends every site one
query (``config["query"] = "validate"``) with every model's weights and
temperature, their architecture (``model``, ``image-size``, ``norm``: one for all,
so that a site starts one process and builds one network), the class names,
the split to score (``validate-split``: all of the site's labelled scans, or its
training or validation split) and whether to adapt first (``validate-adapt``: the
site re-estimates the model's BatchNorm statistics on those scans, labels unused,
:func:`brainfl.model.batch_norm.recalibrate_batchnorm`). A site answers with its
scan count and a :class:`~brainfl.evaluation.count_summary.CountSummary` (scans by
true class, predicted class and confidence bin): no file name, path, hash or
per-scan value. The coordinator scores each site's counts and their sum (the
``pooled`` row, equal to scoring the union of the sites' scans) with the metric
registry's intervals and writes :mod:`brainfl.report.validation`'s outputs.

The models come from :mod:`brainfl.federation.validation_models`; one query
scores every model at every site: the cross-site matrix.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG
from brainfl.data.sites import SiteData
from brainfl.evaluation.count_summary import CountSummary, labelled_set, summarize
from brainfl.evaluation.intervals import ECE_BINS, scores_of
from brainfl.evaluation.registry import LabelledSet
from brainfl.federation.audit import AuditedGrid, AuditLog
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of
from brainfl.federation.setup import QUERY, query_sites_and_errors, setup_federation
from brainfl.federation.validation_models import ModelToValidate, check_models, models_to_validate
from brainfl.model.batch_norm import recalibrate_batchnorm
from brainfl.model.files import LoadedModel, load_model, trainable_weights
from brainfl.model.outputs import notumor_rule, scale_probabilities
from brainfl.model.process_cache import model_for, model_inputs
from brainfl.model.training import predict_proba
from brainfl.report.results import write_run_config
from brainfl.report.validation import POOLED, make_validation_report, validation_row, write_validation
from brainfl.settings.run_settings import RunSettings

VALIDATE = "validate"  # the query config's QUERY value of this query
SUMMARY = "summary"  # a site's answer: summary-<i>, its CountSummary's arrays for model i
# the query config's keys a site builds the model from
ARCHITECTURE = ("model", "image-size", "norm", "standardization", "crop")


def architecture(loaded: LoadedModel) -> dict[str, Any]:
    """The settings that build ``loaded``'s network and frame its scans, as run-config keys."""
    values = (loaded.model_name, loaded.image_size, loaded.norm, loaded.standardization, loaded.crop)
    return dict(zip(ARCHITECTURE, values, strict=True))


def load_models(models: Sequence[ModelToValidate]) -> list[LoadedModel]:
    """The models loaded, one line when they are not one architecture (one query carries them all)."""
    loaded = [load_model(model.path) for model in models]
    for model, other in zip(models, loaded, strict=True):
        if architecture(other) != architecture(loaded[0]):
            raise BrainFLError(
                f"setting 'validate-models': {model.path} is a {architecture(other)} network, "
                f"{models[0].path} a {architecture(loaded[0])} one; validate them in separate runs"
            )
    return loaded


def validation_query(loaded: Sequence[LoadedModel], settings: RunSettings) -> RecordDict:
    """What every site is sent: each model's weights (``model-<i>``), its temperature, and what the site
    needs to build and score them."""
    first = loaded[0]
    built = settings.replace(**{key.replace("-", "_"): value for key, value in architecture(first).items()})
    bundle = model_for(built, first.class_names)
    config = {
        QUERY: VALIDATE,
        "class-names": ",".join(first.class_names),
        **architecture(first),
        "models": len(loaded),
        **{f"temperature-{index}": model.temperature for index, model in enumerate(loaded)},
        **{f"notumor-threshold-{index}": model.notumor_threshold for index, model in enumerate(loaded)},
        "validate-split": settings.evaluation.validate_split,
        "validate-adapt": settings.evaluation.validate_adapt,
    }
    content = RecordDict({"config": ConfigRecord(config)})
    for index, model in enumerate(loaded):
        content[f"model-{index}"] = ArrayRecord(trainable_weights(bundle, model.model))
    return content


def site_validation(settings: RunSettings, site: SiteData, content: RecordDict) -> RecordDict:
    """A site's answer to the validation query: its scan count and, per model, its counts (``summary-<i>``),
    nothing per scan."""
    config = content["config"]
    images = site.split(str(config["validate-split"]))
    if len(images) == 0:
        raise BrainFLError(f"site {site.site_id} has no scans in its '{config['validate-split']}' split")
    bundle = model_for(settings, images.class_names)
    inputs = model_inputs(settings.model, bundle, images)
    answer = RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: len(images), "site-id": site.site_id})})
    for index in range(int(config["models"])):
        bundle.trainable.set_weights(content[f"model-{index}"].to_numpy_ndarrays())
        if config["validate-adapt"]:
            recalibrate_batchnorm(bundle.trainable, inputs, settings.training.batch_size)
        raw = predict_proba(bundle.trainable, inputs)
        probabilities = scale_probabilities(raw, float(config[f"temperature-{index}"]))
        rule = notumor_rule(images.class_names, float(config[f"notumor-threshold-{index}"]))
        summary = summarize(
            LabelledSet(images.labels, probabilities, len(images.class_names), ECE_BINS, rule)
        )
        answer[f"{SUMMARY}-{index}"] = ArrayRecord(summary.to_arrays())
    adapted = ", each adapted to them first (BatchNorm statistics)" if config["validate-adapt"] else ""
    LOG.info(
        "site %d: scored %d models on %d scans (%s split)%s",
        site.site_id,
        int(config["models"]),
        len(images),
        config["validate-split"],
        adapted,
    )
    return answer


def query_architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys of the network a validation query's models need."""
    return {key: config[key] for key in ARCHITECTURE}


def site_summaries(replies: Sequence[Message], index: int, num_classes: int) -> dict[int, CountSummary]:
    """Each answering site's counts for model ``index``, checked to be a summary of ``num_classes``
    classes."""
    summaries = {}
    for reply in sorted(replies, key=site_of):
        try:
            summary = CountSummary.from_arrays(reply.content[f"{SUMMARY}-{index}"].to_numpy_ndarrays())
        except (KeyError, ValueError) as error:
            raise BrainFLError(
                f"site {site_of(reply)} answered the validation query without counts: {error}"
            ) from None
        if summary.counts.shape != (num_classes, num_classes + 1, ECE_BINS):
            raise BrainFLError(f"site {site_of(reply)} answered counts of shape {summary.counts.shape}")
        summaries[site_of(reply)] = summary
    return summaries


def score_model(label: str, summaries: Mapping[int, CountSummary], class_names: Sequence[str]) -> list[dict]:
    """The model's row at every site, then its pooled row (the sites applied the model's ``notumor``
    threshold; the rule here only names the class for the tumor-vs-notumor metrics)."""
    rule = notumor_rule(class_names)
    rows = [
        validation_row(label, str(site), scores_of(labelled_set(summary, rule), class_names))
        for site, summary in summaries.items()
    ]
    pooled = functools.reduce(operator.add, summaries.values())
    return [*rows, validation_row(label, POOLED, scores_of(labelled_set(pooled, rule), class_names))]


def log_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        LOG.info(
            "model %s at site %s: accuracy %.4f [%.4f, %.4f] on %d scans",
            row["model"],
            row["site"],
            row["accuracy"],
            row["accuracy_low"],
            row["accuracy_high"],
            row["images"],
        )


def run_validation(grid: Grid, context: Context, settings: RunSettings, output_dir: Path) -> None:
    """Score every model of ``validate-models`` at every site; write the tables and the page."""
    del context  # the run's context: everything needed is in ``settings``
    grid = AuditedGrid(grid, AuditLog(output_dir))  # every message and reply is in audit.jsonl
    models = models_to_validate(settings.evaluation)
    class_names = check_models(models)
    query = validation_query(load_models(models), settings)
    setup_federation(grid, settings.federation, class_names, None)
    write_run_config(output_dir, {**settings.to_config(), "class-names": ",".join(class_names)})
    nodes = list(grid.get_node_ids())
    replies, failed = query_sites_and_errors(grid, query, nodes, settings.federation.round_timeout, VALIDATE)
    for reply in failed:
        LOG.warning(
            "site node %d did not score the models: %s", reply.metadata.src_node_id, reply.error.reason
        )
    if not replies:
        raise BrainFLError("no site answered the validation query")
    rows = [
        row
        for index, model in enumerate(models)
        for row in score_model(model.label, site_summaries(replies, index, len(class_names)), class_names)
    ]
    log_rows(rows)
    paths = write_validation(output_dir, rows)
    paths.append(make_validation_report(output_dir))
    LOG.info("validation written: %s", ", ".join(path.name for path in paths))
    LOG.info("outputs written to %s", output_dir)
