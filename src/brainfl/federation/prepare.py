"""``brainfl prepare``: check a run's settings and data before any Flower process starts (run.sh calls it).

It decodes and caches the images so that the sites and the server start
training at once (for an evaluation-only run, at the input size of the models
to validate, whose files it checks), prints the layout found and the sites' sizes, and writes
the checked run config for ``flwr run``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.data.central import CentralData, central_data, configured_class_names
from brainfl.data.partitioning import partition_indices
from brainfl.data.sites import describe_layout, load_run_dataset, site_data, site_folders
from brainfl.federation.strategy import check_strategy
from brainfl.federation.validation_models import models_to_validate, validation_settings
from brainfl.model.choices import augmentation_names, check_vgg_weights
from brainfl.report.results import check_new_run_folder
from brainfl.settings.run_config import add_settings_arguments, settings_from_args, to_toml, toml_value
from brainfl.settings.run_settings import RunSettings, default_run_config


def prepare(args: argparse.Namespace) -> None:
    """Validate settings and data, decode and cache the images, check the partitions.

    Prints the settings that differ from the defaults, the data folder's layout
    and what the data gives: images, classes, test images and site sizes.
    """
    settings = settings_from_args(args.app_dir, args.run_config, args.output_dir)
    if settings.evaluation.validate_models:
        models = models_to_validate(settings.evaluation)
        settings = validation_settings(settings, models)
        labels = ", ".join(model.label for model in models)
        print(f"validation: {len(models)} models scored at every site, nothing trained: {labels}")
    if args.await_all_sites:
        settings = settings.replace(wait_for_sites=settings.data.num_partitions)
    defaults = default_run_config(args.app_dir)
    changed = [f"{k}={toml_value(v)}" for k, v in settings.to_config().items() if v != defaults[k]]
    print(f"settings: {' '.join(changed) or 'the defaults'} (others: pyproject.toml's defaults)")
    check_strategy(settings, defaults)
    check_new_run_folder(settings)
    if settings.federation.min_sites > settings.data.num_partitions:
        raise BrainFLError(
            f"setting 'min-sites'={settings.federation.min_sites} is more than "
            f"num-partitions={settings.data.num_partitions} (the sites): the rounds would wait forever"
        )
    check_vgg_weights(settings.model)
    augmentation_names(settings.model.augmentation)
    central = central_data(settings)
    print(describe_central(central))
    if site_dirs := args.site_data_dir or site_folders(settings):
        check_site_folders(settings, site_dirs, central.class_names)
    else:
        check_partitions(settings, central)
    if args.write_run_config:
        text = to_toml(settings.to_config())
        try:
            write_atomically(Path(args.write_run_config), lambda handle: handle.write(text.encode()))
        except OSError as error:
            raise BrainFLError(
                f"--write-run-config: cannot write {args.write_run_config} ({error.strerror or error})"
            ) from None


def check_classes(central: CentralData, data_classes: Sequence[str], configured: bool) -> None:
    """The sites' classes against the coordinator's: refused when they differ (a class the test set
    lacks, or one class-names does not name); a class of class-names with no training scan is a
    warning, since the model then has an output that no site trains."""
    coordinator, sites = set(central.class_names), set(data_classes)
    if configured and sites <= coordinator:
        for name in sorted(coordinator - sites):
            print(f"warning: class-names has '{name}', of which data-dir has no training scan")
        return
    if sites != coordinator:
        where = "class-names" if configured else f"the test set ({central.root})"
        raise BrainFLError(
            f"{where} has the classes {', '.join(central.class_names)}, but data-dir's scans have "
            f"{', '.join(data_classes)}: the sites and the coordinator need the same classes"
        )


def check_partitions(settings: RunSettings, central: CentralData) -> None:
    """Load ``data-dir`` as the simulated sites will and print the sizes of their partitions."""
    dataset = load_run_dataset(settings)
    print(describe_layout(dataset, settings.data.test_fraction))
    train = dataset.train
    check_classes(central, train.class_names, configured_class_names(settings.data) is not None)
    parts = partition_indices(
        train.labels,
        settings.data.num_partitions,
        settings.data.partitioning,
        settings.data.dirichlet_alpha,
        settings.seed,
        train.groups,
    )
    print(
        f"data ok: {len(train)} training images in {len(train.class_names)} classes "
        f"({', '.join(train.class_names)}), {len(dataset.test)} test images; "
        f"{len(parts)} sites of {min(map(len, parts))}-{max(map(len, parts))} images"
    )


def describe_central(central: CentralData) -> str:
    """One line on what the coordinator evaluates on."""
    classes = ", ".join(central.class_names)
    if central.test is None:
        return f"coordinator: no central test set (test-dir=none); classes {classes}"
    kind = "its test folder or Testing split" if central.official else "a hold-out of data-dir"
    return f"coordinator: {len(central.test)} test images ({kind}, {central.root}); classes {classes}"


def check_site_folders(settings: RunSettings, site_dirs: Sequence[str], class_names: tuple[str, ...]) -> None:
    """Load each site's own folder as its SuperNode will (layout, formats, split), caching the images."""
    count = settings.data.num_partitions
    if site_dirs and len(site_dirs) != count:
        raise BrainFLError(f"--site-data-dir: {len(site_dirs)} folders for {count} sites (num-partitions)")
    for site_id, site_dir in enumerate(site_dirs):
        site = site_data(settings, {"partition-id": site_id, "data-dir": site_dir}, class_names)
        print(f"site {site_id}: {site_dir}: {len(site.train)} training and {len(site.val)} validation images")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``prepare`` sub-command's options and handler."""
    add_settings_arguments(parser)
    parser.add_argument(
        "--write-run-config",
        metavar="FILE",
        help="write the checked run config (every key) as TOML, for flwr run --run-config FILE",
    )
    parser.add_argument(
        "--site-data-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a site's own data folder (once per site, in site order): loaded and cached as the site will",
    )
    parser.add_argument(
        "--await-all-sites",
        action="store_true",
        help="set wait-for-sites to num-partitions: round 1 waits for every site (run.sh)",
    )
    parser.set_defaults(handler=prepare)
