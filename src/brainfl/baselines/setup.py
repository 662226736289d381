"""The sites of a run's baselines (:mod:`brainfl.baselines.local_pooled`), as the federation sees them.

:func:`prepare` builds what ``brainfl local`` and ``brainfl pooled`` share: the
run's sites (:func:`brainfl.data.sites.site_data`, from the node configs
``run.sh`` gives the SuperNodes), the coordinator's evaluator with the
federated run's leak-free subset, the model and its writer. :func:`pool` joins
the sites' splits for the pooled baseline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from brainfl.core.errors import BrainFLError
from brainfl.data.central import CentralData, central_data
from brainfl.data.duplicates import has_copy_in, hash_files
from brainfl.data.loading import ImageSet
from brainfl.data.sites import SiteData, site_data
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation.setup import Roster
from brainfl.model.files import ModelWriter, run_model_metadata
from brainfl.model.process_cache import model_for
from brainfl.settings.run_settings import DataSettings, RunSettings

POOLED_SITE = 0  # the pooled "site": its seeds are site 0's, as in a centralized run


def node_configs(data: DataSettings, site_dirs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The sites' node configs, as ``run.sh`` gives them to the SuperNodes: a partition of
    ``data-dir`` each, or (``site_dirs``) each site's own folder."""
    count = data.num_partitions
    if site_dirs and len(site_dirs) != count:
        raise BrainFLError(f"--site-data-dir: {len(site_dirs)} folders for {count} sites (num-partitions)")
    if site_dirs:
        return [{"partition-id": i, "data-dir": str(folder)} for i, folder in enumerate(site_dirs)]
    return [{"partition-id": i, "num-partitions": count} for i in range(count)]


def federation_leak_free(central: CentralData, sites: Sequence[SiteData]) -> np.ndarray | None:
    """The federated run's leak-free test subset: the test images of which no site holds an exact
    or near copy (what the setup query of :mod:`brainfl.federation.setup` finds)."""
    if central.test is None:
        return None
    test_hashes = hash_files(central.root, central.test.files)
    copied = np.zeros(len(test_hashes), dtype=bool)
    for site in sites:  # the files a site hashes to answer the setup query
        copied |= has_copy_in(test_hashes, hash_files(site.folder, [*site.train.files, *site.val.files]))
    return Roster({site.site_id: len(site.train) for site in sites}, copied).leak_free()


@dataclasses.dataclass(frozen=True)
class Baseline:
    """What every baseline of a run needs: its sites, their node configs, the coordinator's evaluator
    (None: no test set), the model and its writer, and the run config to record."""

    sites: list[SiteData]
    configs: list[dict[str, Any]]
    evaluator: CentralEvaluator | None
    writer: ModelWriter
    config: dict[str, Any]

    def source(self, data: DataSettings, index: int) -> str:
        """Where site ``index``'s images come from: its own folder, or a partition of ``data-dir``."""
        site = self.sites[index]
        own = "data-dir" in self.configs[index]
        return str(site.folder) if own else f"partition {site.site_id} of {data.num_partitions}"


def prepare(settings: RunSettings, site_dirs: Sequence[str], kind: str) -> Baseline:
    """The sites, evaluator and model of a ``kind`` (``local``/``pooled``) baseline of the run."""
    configs = node_configs(settings.data, site_dirs)
    central = central_data(settings)
    class_names = central.class_names
    sites = [site_data(settings, config, class_names) for config in configs]
    evaluator = None
    if central.test is not None:
        evaluator = CentralEvaluator(
            settings,
            central.test,
            class_names,
            official=central.official,
            leak_free=federation_leak_free(central, sites),
        )
    bundle = model_for(settings, class_names)
    writer = ModelWriter(
        bundle,
        run_model_metadata(settings, class_names),
    )
    config = {
        **settings.to_config(),
        "class-names": ",".join(class_names),
        f"{kind}-baseline": True,
        "site-data-dirs": os.pathsep.join(str(folder) for folder in site_dirs),  # as the setting has them
    }
    return Baseline(sites, configs, evaluator, writer, config)


def pool(sites: Sequence[SiteData]) -> SiteData:
    """The sites' training splits as one training set and their held-out splits as one held-out set."""

    return SiteData(
        POOLED_SITE,
        ImageSet.joined([s.train for s in sites]),
        ImageSet.joined([s.val for s in sites]),
        sites[0].folder,
    )
