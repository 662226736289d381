"""An in-process Flower grid: the real ServerApp and ClientApp code, one Python process.

``InProcessGrid`` delivers each message to a ClientApp (``brainfl.federation.client_app.app``,
or another one, e.g. ``client_app_with(poisoning_mod(...))``) with the
context a SuperNode would give it (``partition-id``, ``num-partitions``) and
returns the replies, so strategy, DP, SecAgg+ and poisoning tests run the
project's own server and site code without Ray or a SuperLink, in seconds.
A ``tap`` sees every reply before the server does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.common import DEFAULT_TTL
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from brainfl.federation.client_app import app as project_client_app

NODE_BASE = 1000


def without_none(config: dict) -> dict:
    """A node config without its None keys (``"num-partitions": None``: a site with its own folder)."""
    return {key: value for key, value in config.items() if value is not None}


class InProcessGrid(Grid):
    """Routes messages to per-site contexts in this process (one call at a time, like one CPU)."""

    def __init__(
        self,
        num_sites: int,
        run_config: dict,
        node_config: Callable[[int], dict] | None = None,
        tap: Callable[[Message], None] | None = None,
        client_app: ClientApp | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp process
        self._run = Run.create_empty(run_id=1)
        self.run_config = run_config
        self.contexts = {
            NODE_BASE + site: Context(
                run_id=1,
                node_id=NODE_BASE + site,
                node_config=without_none(
                    {
                        "partition-id": site,
                        "num-partitions": num_sites,
                        **(node_config(site) if node_config else {}),
                    }
                ),
                state=RecordDict(),
                run_config=run_config,
            )
            for site in range(num_sites)
        }
        self.tap = tap
        self.client_app = client_app or project_client_app
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = 1
            self.sent.append(message)
            # A copy, as the transport would deliver: sites must not share (or mutate) the server's objects.
            reply = self.client_app(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id])
            metadata = Metadata(
                run_id=1,
                message_id=str(uuid4()),
                src_node_id=message.metadata.dst_node_id,
                dst_node_id=0,
                reply_to_message_id=message_id,
                group_id=message.metadata.group_id,
                created_at=time.time(),
                ttl=DEFAULT_TTL,
                message_type=message.metadata.message_type,
            )
            if reply.has_error():
                reply = make_message(metadata=metadata, error=reply.error)
            else:
                reply = make_message(metadata=metadata, content=reply.content)
            if self.tap is not None:
                self.tap(reply)
            self.replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(message_id) for message_id in message_ids if message_id in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def make_reply(site: int, weights: list, examples: int, loss: float = 1.0) -> Message:
    """A site's train reply as the server receives it (arrays, example count, metrics)."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(weights),
            "metrics": MetricRecord(
                {"num-examples": examples, "train_loss": loss, "num_train": examples, "site-id": site}
            ),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id=f"m{site}",
        src_node_id=NODE_BASE + site,
        dst_node_id=0,
        reply_to_message_id="q",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return make_message(metadata=metadata, content=content)


def keep_train_replies(kept: list[Message]) -> Callable[[Message], None]:
    """A ``tap`` that appends the sites' train replies (not their setup answers) to ``kept``."""

    def tap(reply: Message) -> None:
        if reply.metadata.message_type == MessageType.TRAIN:
            kept.append(reply)

    return tap


def train_messages(grid: InProcessGrid) -> list[Message]:
    """The train messages the server sent, in order."""
    return [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]


def send_train_round(grid: InProcessGrid, arrays: list, config: dict) -> dict[int, Message]:
    """Send every site a train message with ``arrays`` and ``config``; return the replies by site."""
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)})
    messages = [grid.create_message(content, MessageType.TRAIN, node, "1") for node in grid.get_node_ids()]
    return {reply.metadata.src_node_id - NODE_BASE: reply for reply in grid.send_and_receive(messages)}


def run_in_process(num_sites: int, run_config: dict, **grid_options) -> InProcessGrid:
    """Run the project's ServerApp over ``num_sites`` in-process sites; return the grid.

    ``grid_options`` go to :class:`InProcessGrid` (``node_config``, ``tap``, ``client_app``).
    """
    from brainfl.federation.server_app import app as server_app  # only the runs need the server's imports

    grid = InProcessGrid(num_sites, run_config, **grid_options)
    server_context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, server_context)
    return grid
