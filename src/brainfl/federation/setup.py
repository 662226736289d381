"""Before round 1: which sites take part, what each holds, and which test images they hold copies of.

The coordinator waits for the sites (``wait-for-sites``, up to
``round-timeout``), then sends every connected SuperNode one query message
with the class names and the perceptual hashes of its test images (never
the images). Each site answers with its image counts and the indices of the
test images that have an exact or near copy among its own scans
(:func:`brainfl.data.duplicates.has_copy_in`); a site sends no hash and nothing
else of its images. From the replies the coordinator learns, on both of
Flower's engines alike:

* the leak-free test subset of this federation: the test images no site
  holds a copy of (scored as ``leak_free_accuracy``);
* the number of sites (Multi-Krum's selection, DP's sampled sites) and
  each site's example count (SecAgg+'s bound on a site's weight), never
  the simulation setting ``num-partitions``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of, split_replies
from brainfl.settings.run_settings import FederationSettings

TEST_HASHES = "test-hashes"  # the coordinator's test pHashes, (n, 4) uint64 words
TEST_COPIES = "test-copies"  # a site's answer: indices of test images it holds a copy of
QUERY = "query"  # a query's config key saying what is asked: SETUP, calibration or personalize
SETUP = "setup"


@dataclasses.dataclass(frozen=True)
class Roster:
    """The sites that answered the setup query: their example counts and the test images copied."""

    examples: dict[int, int]  # site -> training examples
    copied: np.ndarray | None  # per test image: held by some site (None: no test set)

    @property
    def num_sites(self) -> int:
        """How many sites answered."""
        return len(self.examples)

    @property
    def largest_site(self) -> int:
        """The most training examples one site holds."""
        return max(self.examples.values())

    def leak_free(self) -> np.ndarray | None:
        """Test images no site holds a copy of (None without a test set or when every one is copied)."""
        if self.copied is None or self.copied.all():
            return None
        return ~self.copied


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    """The connected nodes, once ``count`` are connected or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            LOG.warning("only %d of %d sites connected; starting without the others", len(nodes), count)
            break
        time.sleep(0.5)
    return nodes


def setup_query(class_names: tuple[str, ...], test_hashes: np.ndarray | None) -> RecordDict:
    """The query every site gets: the class names and, with a test set, its pHashes."""
    content = RecordDict({"config": ConfigRecord({QUERY: SETUP, "class-names": ",".join(class_names)})})
    if test_hashes is not None:
        content[TEST_HASHES] = ArrayRecord([np.ascontiguousarray(test_hashes, dtype=np.uint64)])
    return content


def query_sites(
    grid: Grid, content: RecordDict, nodes: Iterable[int], timeout: float, stage: str
) -> list[Message]:
    """Send every node in ``nodes`` one query with ``content``; the replies with content (a site's
    error is logged under ``stage``)."""
    return query_sites_and_errors(grid, content, nodes, timeout, stage)[0]


def query_sites_and_errors(
    grid: Grid, content: RecordDict, nodes: Iterable[int], timeout: float, stage: str
) -> tuple[list[Message], list[Message]]:
    """:func:`query_sites`, with the replies that carry a site's error beside those with content."""
    messages = [Message(content=content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    return split_replies(grid.send_and_receive(messages, timeout=timeout), stage)


def roster_from_replies(replies: list[Message], num_test: int | None) -> Roster:
    """The sites' example counts and the union of their copied test images."""
    examples: dict[int, int] = {}
    copied = None if num_test is None else np.zeros(num_test, dtype=bool)
    for reply in replies:
        examples[site_of(reply)] = int(reply.content["metrics"][NUM_EXAMPLES])
        if copied is not None:
            indices = reply.content[TEST_COPIES].to_numpy_ndarrays()[0].astype(np.int64)
            if len(indices) and (indices.min() < 0 or indices.max() >= num_test):
                raise BrainFLError(f"site {site_of(reply)} answered test indices outside 0..{num_test - 1}")
            copied[indices] = True
    return Roster(examples, copied)


def setup_federation(
    grid: Grid, federation: FederationSettings, class_names: tuple[str, ...], test_hashes: np.ndarray | None
) -> Roster:
    """Wait for the sites, query each once, and return what they answered (see the module docstring)."""
    awaited = max(federation.wait_for_sites, federation.min_sites)
    nodes = wait_for_sites(grid, awaited, federation.round_timeout)
    query = setup_query(class_names, test_hashes)
    replies, failed = query_sites_and_errors(grid, query, nodes, federation.round_timeout, "setup")
    if not replies and failed:  # the sites answered, with errors: say what they said
        first = failed[0]
        raise BrainFLError(
            f"no site could join: site node {first.metadata.src_node_id} answered the setup query with "
            f"an error: {first.error.reason}" + (f" ({len(failed)} sites failed)" if len(failed) > 1 else "")
        )
    if not replies:
        raise BrainFLError(
            f"no site answered the setup query within {federation.round_timeout:g} s (round-timeout)"
        )
    roster = roster_from_replies(replies, None if test_hashes is None else len(test_hashes))
    LOG.info(
        "%d sites joined, holding %d training images (largest site %d)",
        roster.num_sites,
        sum(roster.examples.values()),
        roster.largest_site,
    )
    if roster.copied is not None:
        LOG.info(
            "federated leak check: %d of %d test images have no exact or near copy at any site",
            int((~roster.copied).sum()),
            len(roster.copied),
        )
    return roster
