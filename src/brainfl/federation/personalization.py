"""After the last round: each site's own copy of the final model, adapted or fine-tuned, saved and scored.

With ``fine-tune-epochs`` > 0, ``fedbn=true``, ``adapt-sites=true``, ``ditto-lambda`` > 0 or
``site-prior=true`` the coordinator sends every
connected SuperNode one query message (``config["query"] = "personalize"``,
:data:`PERSONALIZE`) with the final global weights (after calibration), the
class names, ``fine-tune-learning-rate``, ``fine-tune-epochs``, ``adapt-sites`` and the final
model's temperature and ``notumor`` threshold (with ``site-prior``, also the class mix the global
model was fitted to, :func:`brainfl.federation.site_prior.reference_prior`). The site
(:func:`personalize_site`)

1. scores the global model as received (``final_model.keras``'s weights) on its
   held-out split (:func:`brainfl.federation.site_training.validate`);
2. with FedBN, puts its own BatchNorm arrays on top (:mod:`brainfl.federation.fedbn`) and,
   when it also fine-tunes or adapts, scores that model too (stage ``site_bn``);
3. with ``adapt-sites``, re-estimates the BatchNorm statistics on its own training
   images, labels not used (AdaBN, :func:`brainfl.model.batch_norm.recalibrate_batchnorm`:
   every other weight unchanged), scores it (stage ``adapted``) and saves it at the site
   as :data:`ADAPTED_MODEL` beside the personalized model's place, with the final
   model's temperature and ``notumor`` threshold (carried over, not refitted) and
   ``adapted`` metadata (the images and the date; as ``brainfl adapt`` writes);
4. with ``fine-tune-epochs`` > 0 (or FedBN alone), fine-tunes it for ``fine-tune-epochs``
   epochs on its own training images with
   :func:`brainfl.federation.site_training.local_update` at ``fine-tune-learning-rate``
   (default a tenth of the first round's: enough to adapt to the site's own
   scanner and class mix, while the last round's, at the end of the cosine
   schedule, would change little but the BatchNorm statistics), then precise
   BN from its own images;
5. scores it again (stage ``personalized``), saves it as a brainfl model file
   at the site (:func:`personalized_model_path`; no temperature: the global
   model's does not describe the fine-tuned one);
6. with ``site-prior``, folds its own class mix into the classifier of the model it has now
   (:mod:`brainfl.federation.site_prior`: the fine-tuned one, else the adapted one or the
   global one with its own BatchNorm), scores it (stage ``site_prior``) and saves it beside the
   personalized model's place as :data:`SITE_PRIOR_MODEL` (``site_prior`` metadata: its class
   frequencies and the reference; no temperature);
7. with Ditto (``ditto-lambda`` > 0), scores the personal model it kept through the
   rounds (:mod:`brainfl.federation.ditto`; stage ``ditto``, NaN where it has none) and
   saves it beside the personalized model's place as
   :data:`brainfl.federation.ditto.DITTO_MODEL`;

and answers with numbers only: its held-out and training image counts and each stage's held-out
loss, accuracy, balanced accuracy and sensitivity per class.

A site without a validation split adapts, fine-tunes and saves its models but answers
0 held-out images and no scores (its training images would flatter the model
fitted on them). The coordinator writes ``personalization.csv`` (one row
per site: each stage's scores and the gain, the last stage minus global) and
logs one line; the report shows the table. The fine-tuned models and their
training never leave the sites. With ``dp`` the answers, like the held-out
scores every train reply carries, are not covered by the DP accounting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from brainfl.core.logs import LOG
from brainfl.data.sites import SiteData
from brainfl.evaluation.metrics import held_out_keys
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of
from brainfl.federation.ditto import DITTO_MODEL, PersonalModel
from brainfl.federation.fedbn import SiteBatchNorm
from brainfl.federation.setup import QUERY, query_sites
from brainfl.federation.site_prior import fold_prior, prior_shift, reference_prior
from brainfl.federation.site_training import local_update, site_mix, validate
from brainfl.inference.adaptation import ADAPTED_MODEL, Adaptation, now
from brainfl.model.batch_norm import recalibrate_batchnorm
from brainfl.model.files import ModelWriter, run_model_metadata
from brainfl.model.process_cache import model_for, model_inputs
from brainfl.report.results import PERSONALIZATION_CSV, CsvAppender
from brainfl.settings.run_settings import RunSettings

PERSONALIZE = "personalize"  # the query config's QUERY value of this query
EPOCHS = "fine-tune-epochs"  # the query's epochs of fine-tuning
ADAPT = "adapt-sites"  # the query's adapt-sites
PRIOR = "site-prior"  # the query's site-prior
REFERENCE = "reference-prior"  # the query's class mix of the global model (with site-prior)
DITTO_LAMBDA = "ditto-lambda"  # the query's ditto-lambda (> 0: score and save the Ditto model)
PERSONALIZED_MODEL = "personalized_model.keras"
SITE_PRIOR_MODEL = "site_prior_model.keras"
GLOBAL, SITE_BN, ADAPTED, PERSONALIZED, GAIN = "global", "site_bn", "adapted", "personalized", "gain"
DITTO, SITE_PRIOR = "ditto", "site_prior"
DECISION = ("temperature", "notumor_threshold")  # the final model's metadata an adapted copy keeps
COUNTS = ("held_out_images", "num_train", "fine_tune_epochs")


def enabled(settings: RunSettings) -> bool:
    """Whether the run asks the sites for their own models (fine-tuning, FedBN, adapting, Ditto or
    the site's class prior)."""
    federation = settings.federation
    return (
        settings.training.fine_tune_epochs > 0
        or federation.fedbn
        or federation.adapt_sites
        or federation.ditto_lambda > 0
        or federation.site_prior
    )


def stages(
    fedbn: bool, epochs: int, adapt: bool = False, ditto: bool = False, prior: bool = False
) -> tuple[str, ...]:
    """The models a site scores: the global one as received; with FedBN and fine-tuning or adapting,
    the global one with the site's own BatchNorm; the adapted one; the fine-tuned one (FedBN alone:
    the site's own BatchNorm) it saves; that with its own class prior; with Ditto, its personal
    model (the last one's is the gain)."""
    return (
        GLOBAL,
        *((SITE_BN,) if fedbn and (epochs or adapt) else ()),
        *((ADAPTED,) if adapt else ()),
        *((PERSONALIZED,) if epochs or (fedbn and not adapt) else ()),
        *((SITE_PRIOR,) if prior else ()),
        *((DITTO,) if ditto else ()),
    )


def run_stages(settings: RunSettings) -> tuple[str, ...]:
    """:func:`stages` of a run's settings."""
    federation = settings.federation
    return stages(
        federation.fedbn,
        settings.training.fine_tune_epochs,
        federation.adapt_sites,
        federation.ditto_lambda > 0,
        federation.site_prior,
    )


def score_names(class_names: Sequence[str]) -> list[str]:
    """``loss``, ``accuracy``, ``balanced_accuracy`` and ``sensitivity_<class>`` per class."""
    return [key.removeprefix("val_") for key in held_out_keys(class_names)]


def personalization_header(chosen: Sequence[str], names: Sequence[str]) -> list[str]:
    """Columns of ``personalization.csv``: the site, its counts, then per score each stage and the gain."""
    scores = [
        column
        for name in names
        for column in (
            *(f"{stage}_{name}" for stage in chosen),
            *([f"{GAIN}_{name}"] if name != "loss" else []),
        )
    ]
    return ["site", *COUNTS, *scores]


def personalized_model_path(context: Context, settings: RunSettings) -> Path:
    """Where a site saves its personalized model: ``<node config output-dir>/run-<run id>/``, else
    ``<output-dir>/sites/site_<n>/`` (all sites on the coordinator's machine, as in simulation), else
    ``sites/site_<n>/`` in the working folder."""
    own = str(context.node_config.get("output-dir", "") or "")
    if own:
        return Path(own).expanduser() / f"run-{context.run_id}" / PERSONALIZED_MODEL
    site = context.node_config.get("partition-id", context.node_id)
    base = Path(settings.output_dir).expanduser() if settings.output_dir else Path()
    return base / "sites" / f"site_{site}" / PERSONALIZED_MODEL


def personalization_query(
    weights: list[np.ndarray],
    class_names: Sequence[str],
    settings: RunSettings,
    decision: Mapping[str, float] | None = None,
    reference: Sequence[float] | None = None,
) -> RecordDict:
    """What every site gets: the final weights, the class names, the learning rate, the epochs, whether
    to adapt, the final model's ``decision`` metadata (temperature, ``notumor`` threshold) and, with
    ``site-prior``, the class mix the global model follows (``reference``; uniform when not given)."""
    last = settings.federation.num_server_rounds
    config = {
        QUERY: PERSONALIZE,
        "class-names": ",".join(class_names),
        "learning-rate": settings.training.fine_tune_learning_rate,
        "global-round": last,
        EPOCHS: settings.training.fine_tune_epochs,
        ADAPT: settings.federation.adapt_sites,
        DITTO_LAMBDA: settings.federation.ditto_lambda,
        PRIOR: settings.federation.site_prior,
        **({REFERENCE: [float(value) for value in reference]} if reference is not None else {}),
        **{key: float(value) for key, value in (decision or {}).items() if key in DECISION},
    }
    return RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)})


def personalize_site(
    settings: RunSettings,
    site: SiteData,
    weights: list[np.ndarray],
    config: Mapping[str, Any],
    context: Context,
) -> MetricRecord:
    """Score, fine-tune, score again and save the site's model (see the module docstring); the answer."""
    bundle = model_for(settings, site.train.class_names)
    epochs = int(config.get(EPOCHS, settings.training.fine_tune_epochs))
    adapt = bool(config.get(ADAPT, settings.federation.adapt_sites))
    ditto_lambda = float(config.get(DITTO_LAMBDA, settings.federation.ditto_lambda))
    prior = bool(config.get(PRIOR, settings.federation.site_prior))
    chosen = stages(settings.federation.fedbn, epochs, adapt, ditto_lambda > 0, prior)

    def held_out() -> dict[str, float]:
        if not len(site.val):
            return dict.fromkeys(held_out_keys(site.val.class_names), math.nan)
        return validate(settings.model, bundle, site)

    bundle.trainable.set_weights(weights)
    scores = {GLOBAL: held_out()}
    batchnorm = SiteBatchNorm(settings.federation.fedbn, bundle.trainable, context.state, site.site_id)
    bundle.trainable.set_weights(batchnorm.apply(weights))
    if SITE_BN in chosen:
        scores[SITE_BN] = held_out()
    names, fedbn = site.train.class_names, settings.federation.fedbn
    metadata = run_model_metadata(settings, names, site=site.site_id, fedbn=fedbn)
    saved = []
    if adapt:
        layers = recalibrate_batchnorm(
            bundle.trainable, model_inputs(settings.model, bundle, site.train), settings.training.batch_size
        )
        scores[ADAPTED] = held_out()
        path = personalized_model_path(context, settings).with_name(ADAPTED_MODEL)
        save_site_model(bundle, {**metadata, **adapted_metadata(config, site, layers)}, path)
        saved.append(path)
    if PERSONALIZED in chosen:
        if epochs:
            local_update(
                settings,
                bundle,
                model_inputs(settings.model, bundle, site.train),
                site.train.labels,
                learning_rate=float(config["learning-rate"]),
                server_round=int(config["global-round"]) + 1,
                site_id=site.site_id,
                epochs=epochs,
            )
        scores[PERSONALIZED] = held_out()
        path = personalized_model_path(context, settings)
        save_site_model(bundle, {**metadata, "fine_tune_epochs": epochs}, path)
        saved.append(path)
    if prior:
        names_count = len(site.train.class_names)
        sent = config.get(REFERENCE)
        fallback = reference_prior(settings.training.balanced_softmax, None, names_count)  # uniform
        reference = [float(value) for value in (fallback if sent is None else sent)]
        mix = site_mix(settings.training, site.train.labels, names_count).tolist()
        fold_prior(bundle.trainable, prior_shift(mix, reference))
        scores[SITE_PRIOR] = held_out()
        path = personalized_model_path(context, settings).with_name(SITE_PRIOR_MODEL)
        recorded = {"site": mix, "reference": reference}
        save_site_model(bundle, {**metadata, "fine_tune_epochs": epochs, "site_prior": recorded}, path)
        saved.append(path)
    if DITTO in chosen:
        personal = PersonalModel(context.state, site.site_id).kept(weights)
        if personal is None:
            LOG.warning("site %d: Ditto: no personal model kept (it never trained); not scored", site.site_id)
            scores[DITTO] = dict.fromkeys(held_out_keys(site.val.class_names), math.nan)
        else:
            bundle.trainable.set_weights(personal)
            scores[DITTO] = held_out()
            path = personalized_model_path(context, settings).with_name(DITTO_MODEL)
            save_site_model(bundle, {**metadata, "ditto_lambda": ditto_lambda}, path)
            saved.append(path)
    return site_answer(site, scores, chosen, epochs, saved)


def adapted_metadata(config: Mapping[str, Any], site: SiteData, layers: int) -> dict[str, Any]:
    """What an adapted copy's file adds: the final model's temperature and ``notumor`` threshold (from
    the query), and ``adapted`` as ``brainfl adapt`` records it (the site's training images, the date,
    the global model's round)."""
    images = len(site.train)
    adaptation = Adaptation(
        f"site {site.site_id} training images",
        images,
        images,
        layers,
        now(),
        {"round": int(config["global-round"])},
    )
    decision = {key: float(config[key]) for key in DECISION if key in config}
    return {**decision, "adapted": adaptation.metadata()}


def save_site_model(bundle: Any, metadata: Mapping[str, Any], path: Path) -> None:
    """Save the site's model (the bundle's current weights) as a brainfl model file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelWriter(bundle, metadata).write(path, bundle.trainable.get_weights())


def site_answer(
    site: SiteData,
    scores: Mapping[str, dict[str, float]],
    chosen: Sequence[str],
    epochs: int,
    saved: list[Path],
) -> MetricRecord:
    """The site's answer, numbers only: its counts and each stage's held-out scores (and the log line)."""
    LOG.info(
        "site %d personalization: %d fine-tuning epochs on %d images; held-out balanced accuracy %s; "
        "saved %s",
        site.site_id,
        epochs,
        len(site.train),
        " -> ".join(f"{stage} {scores[stage]['val_balanced_accuracy']:.4f}" for stage in chosen),
        ", ".join(map(str, saved)),
    )
    counts = {"site-id": site.site_id, NUM_EXAMPLES: len(site.val), "num_train": len(site.train)}
    answer = {
        f"{stage}_{key.removeprefix('val_')}": float(v)
        for stage in chosen
        for key, v in scores[stage].items()
    }
    return MetricRecord({**counts, "fine_tune_epochs": epochs, **answer})


def site_row(reply: Message, chosen: Sequence[str], names: Sequence[str]) -> dict[str, Any] | None:
    """A site's row of ``personalization.csv`` from its answer (None, with a warning, when it is not
    the numbers asked for)."""
    metrics = reply.content["metrics"]
    keys = [f"{stage}_{name}" for stage in chosen for name in names]
    missing = [key for key in (*keys, NUM_EXAMPLES) if not isinstance(metrics.get(key), int | float)]
    if missing:
        LOG.warning(
            "personalization: dropped site %d's answer (no number for %s)", site_of(reply), missing[0]
        )
        return None
    row: dict[str, Any] = {key: float(metrics[key]) for key in keys}
    row.update({f"{GAIN}_{name}": row[f"{chosen[-1]}_{name}"] - row[f"{GLOBAL}_{name}"] for name in names})
    counts = {
        "site": site_of(reply),
        "held_out_images": int(metrics[NUM_EXAMPLES]),
        "num_train": int(metrics.get("num_train", 0)),
        "fine_tune_epochs": int(metrics.get("fine_tune_epochs", 0)),
    }
    return {**counts, **row}


def personalize(
    grid: Grid,
    settings: RunSettings,
    weights: list[np.ndarray],
    class_names: Sequence[str],
    output_dir: Path,
    decision: Mapping[str, float] | None = None,
    federation_counts: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Ask every site for its personalized model's scores (see the module docstring; with
    ``site-prior``, ``federation_counts`` are the sites' training images per class); write
    ``personalization.csv``. Returns its rows (none when the run does not personalize)."""
    (output_dir / PERSONALIZATION_CSV).unlink(missing_ok=True)  # an earlier run's, in a reused folder
    if not enabled(settings):
        return []
    reference = None
    if settings.federation.site_prior:
        balanced = settings.training.balanced_softmax
        reference = reference_prior(balanced, federation_counts, len(class_names)).tolist()
    content = personalization_query(weights, class_names, settings, decision, reference)
    replies = query_sites(
        grid, content, grid.get_node_ids(), settings.federation.round_timeout, "personalization"
    )
    return record_answers(replies, settings, class_names, output_dir)


def record_answers(
    replies: Sequence[Message], settings: RunSettings, class_names: Sequence[str], output_dir: Path
) -> list[dict[str, Any]]:
    """Write the sites' answers to the personalization query as ``personalization.csv`` (and log the
    summary); return its rows."""
    chosen = run_stages(settings)
    names = score_names(class_names)
    rows = sorted(
        (row for reply in replies if (row := site_row(reply, chosen, names)) is not None),
        key=lambda row: row["site"],
    )
    if not rows:
        LOG.warning("personalization: no site answered the personalization query")
        return []
    appender = CsvAppender(output_dir / PERSONALIZATION_CSV, personalization_header(chosen, names))
    for row in rows:
        appender.append(row)
    LOG.info("%s", summary(rows, chosen[-1]))
    return rows


def summary(rows: Sequence[Mapping[str, Any]], last: str = PERSONALIZED) -> str:
    """The log line: the sites' held-out balanced accuracy, global against the ``last`` stage (personalized,
    adapted or Ditto), and the gain."""
    scored = [row for row in rows if row["held_out_images"] > 0]
    text = f"personalization: {len(rows)} sites saved their personalized models"
    if not scored:
        return text + "; none has a validation split to score them on"
    gains = [row[f"{GAIN}_balanced_accuracy"] for row in scored]
    worst = min(scored, key=lambda row: row[f"{GAIN}_balanced_accuracy"])
    means = {
        stage: float(np.nanmean([row[f"{stage}_balanced_accuracy"] for row in scored]))
        for stage in (GLOBAL, last)
    }
    return (
        f"{text}; held-out balanced accuracy, mean over {len(scored)} sites: global {means[GLOBAL]:.4f}"
        f" -> {last} {means[last]:.4f} (gain {float(np.nanmean(gains)):+.4f}; "
        f"worst site {worst['site']} {worst[f'{GAIN}_balanced_accuracy']:+.4f})"
    )
