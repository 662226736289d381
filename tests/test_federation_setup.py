"""A coordinator without training data: setup query, federated leak check, one message per round."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.supercore.task_identity import TaskIdentity
from PIL import Image

from brainfl.core.errors import BrainFLError
from brainfl.data.sites import site_data
from brainfl.federation.setup import TEST_COPIES, roster_from_replies, setup_federation
from brainfl.model.files import FINAL_MODEL
from brainfl.report.results import read_rows
from brainfl.settings.run_settings import settings_from_config, settings_with
from conftest import CLASSES, write_image
from inprocess import InProcessGrid, make_reply, run_in_process

WORKLOAD = {
    "image-size": 16,
    "local-epochs": 1,
    "batch-size": 4,
    "num-server-rounds": 2,
    "val-fraction": 0.25,
}


def coordinator_and_sites(root: Path) -> tuple[Path, list[Path], set[str]]:
    """A Testing-only coordinator folder, two sites with class folders, and the test files they copy.

    Site 0 holds a byte copy of one test image, site 1 a re-encoded (PNG) copy of another.
    """
    coordinator = root / "coordinator"
    for index, name in enumerate(CLASSES):
        for i in range(2):
            write_image(coordinator / "Testing" / name / f"te-{name}-{i}.jpg", 100 + 2 * index + i)
    sites = []
    for site in range(2):
        folder = root / f"site{site}"
        for index, name in enumerate(CLASSES):
            for i in range(4):
                write_image(folder / name / f"p{i}" / "scan.jpg", 1000 * (site + 1) + 10 * index + i)
        sites.append(folder)
    shutil.copy(coordinator / "Testing/glioma/te-glioma-0.jpg", sites[0] / "glioma" / "copy.jpg")
    with Image.open(coordinator / "Testing/notumor/te-notumor-1.jpg") as image:
        image.save(sites[1] / "notumor" / "reencoded.png")
    return coordinator, sites, {"Testing/glioma/te-glioma-0.jpg", "Testing/notumor/te-notumor-1.jpg"}


def run_coordinated(
    tmp_path: Path, settings: dict | None = None
) -> tuple[InProcessGrid, list[Message], set[str]]:
    """Run :func:`coordinator_and_sites`' federation (WORKLOAD and ``settings``, outputs in
    ``tmp_path/run``): the grid, every reply the server received and the test files the sites copy."""
    coordinator, sites, copied = coordinator_and_sites(tmp_path)
    replies: list[Message] = []
    config = {
        **WORKLOAD,
        "data-dir": str(tmp_path / "no-such-folder"),
        "test-dir": str(coordinator),
        "output-dir": str(tmp_path / "run"),
        **(settings or {}),
    }
    grid = run_in_process(
        2,
        config,
        node_config=lambda site: {"data-dir": str(sites[site]), "num-partitions": None},
        tap=replies.append,
    )
    return grid, replies, copied


def test_a_coordinator_with_only_a_test_folder_runs_the_federation(tmp_path):
    """No training data at the coordinator; the leak-free subset is what no site holds a copy of;
    each site gets one setup query and then one message per round."""
    grid, replies, copied = run_coordinated(tmp_path)
    run = tmp_path / "run"
    assert [row["round"] for row in read_rows(run / "federated_learning_results.csv")] == ["0", "1", "2"]
    predictions = read_rows(run / "test_predictions.csv")
    assert {row["file"] for row in predictions if row["leak_free"] == "0"} == copied
    assert len(predictions) == 8
    sent = [message.metadata.message_type for message in grid.sent]
    # no evaluate messages; after the last round one calibration query per site (test_calibration.py)
    assert sent == [MessageType.QUERY] * 2 + [MessageType.TRAIN] * 4 + [MessageType.QUERY] * 2
    setup = [reply for reply in replies if reply.metadata.message_type == MessageType.QUERY][:2]
    for reply in setup:  # a site answers with counts and test indices, nothing of its own images
        assert set(reply.content.keys()) == {"metrics", TEST_COPIES}
        assert reply.content[TEST_COPIES].to_numpy_ndarrays()[0].dtype == np.int64
    site_rows = read_rows(run / "site_metrics.csv")
    assert {row["site"] for row in site_rows if row["round"] == "2" and row["val_accuracy"]} == {"0", "1"}
    assert all(float(row["training_s"]) > 0 and float(row["data_s"]) > 0 for row in site_rows)
    assert "federated leak check: 6 of 8 test images" in (run / "logs" / "server.log").read_text()
    assert (run / FINAL_MODEL).is_file()


def test_without_a_test_set_the_run_trains_and_records_no_scores(tmp_path):
    _, sites, _ = coordinator_and_sites(tmp_path)
    config = {
        **WORKLOAD,
        "data-dir": str(tmp_path / "no-such-folder"),
        "test-dir": "none",
        "class-names": ",".join(CLASSES),
        "output-dir": str(tmp_path / "run"),
    }
    run_in_process(2, config, node_config=lambda site: {"data-dir": str(sites[site]), "num-partitions": None})
    rows = read_rows(tmp_path / "run" / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1", "2"]
    assert rows[2]["accuracy"] == "" and float(rows[2]["train_loss"]) > 0
    assert (tmp_path / "run" / FINAL_MODEL).is_file()
    assert not (tmp_path / "run" / "test_predictions.csv").exists()


def setup_reply(site: int, examples: int, copies: list[int]) -> Message:
    """A site's answer to the setup query, as the server receives it."""
    reply = make_reply(site, [], examples)
    reply.content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": examples, "site-id": site}),
            TEST_COPIES: ArrayRecord([np.array(copies, dtype=np.int64)]),
        }
    )
    return reply


def test_the_roster_unions_the_copies_and_keeps_each_sites_count():
    roster = roster_from_replies([setup_reply(0, 30, [1]), setup_reply(1, 50, [1, 3])], num_test=5)
    assert roster.num_sites == 2 and roster.largest_site == 50
    assert roster.leak_free().tolist() == [True, False, True, False, True]


def test_the_roster_refuses_indices_outside_the_test_set():
    with pytest.raises(BrainFLError, match=r"outside 0\.\.4"):
        roster_from_replies([setup_reply(0, 30, [5])], num_test=5)


class SitesAnsweringWithErrors:
    """A grid whose two connected sites answer every message with an error, as a deployment's do."""

    REASON = "site 0: class folder <site>/notumor is not one of the classes glioma, meningioma"

    def __init__(self) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp process

    def get_node_ids(self) -> list[int]:
        return [11, 12]

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        error = Error(code=0, reason=self.REASON)
        return [
            make_message(metadata=make_reply(site, [], 1).metadata, error=error)
            for site in range(len(messages))
        ]


def test_sites_that_answer_the_setup_query_with_an_error_are_quoted_not_called_silent():
    settings = settings_with(round_timeout=30.0, wait_for_sites=2)
    with pytest.raises(BrainFLError) as raised:
        setup_federation(SitesAnsweringWithErrors(), settings.federation, ("glioma", "meningioma"), None)
    message = str(raised.value)
    assert message.startswith("no site could join: site node") and "(2 sites failed)" in message
    assert f"answered the setup query with an error: {SitesAnsweringWithErrors.REASON}" in message
    assert "within 30 s" not in message


def test_virtual_sites_of_the_simulation_engine_train_on_their_own_folders(tmp_path):
    """``site-data-dirs``: site ``partition-id`` of the simulation engine reads its own folder, whole."""
    coordinator, sites, _ = coordinator_and_sites(tmp_path)
    config = {
        **WORKLOAD,
        "data-dir": str(tmp_path / "no-such-folder"),
        "test-dir": str(coordinator),
        "site-data-dirs": ":".join(map(str, sites)),
        "output-dir": str(tmp_path / "run"),
    }
    run_in_process(2, config, node_config=lambda site: {"partition-id": site, "num-partitions": 2})
    rows = read_rows(tmp_path / "run" / "site_metrics.csv")
    held = {int(row["site"]): int(row["num_train"]) + int(row["num_val"]) for row in rows}
    scans = [sum(1 for path in folder.rglob("*") if path.is_file()) for folder in sites]
    assert held == {0: scans[0], 1: scans[1]}  # each site all of its own folder, no partition of data-dir
    with pytest.raises(BrainFLError, match="'site-data-dirs' names 2 folders; site 2 has none"):
        site_data(settings_from_config(config), {"partition-id": 2, "num-partitions": 3}, CLASSES)
