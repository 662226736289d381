"""The run's audit trail: what went between the coordinator and each site, message by message.

The coordinator's grid is wrapped in :class:`AuditedGrid`, which appends to
``audit.jsonl`` in the run's output folder one JSON line per message sent and
per reply received (train, evaluate, and the setup, calibration and
personalization queries); the recorder adds one line per round (which sites
were aggregated, which dropped and why, the hash of the global model after
the round). Each site logs the same view of the messages it received and
the replies it sent into its own log (:func:`site_audit_mod`). A line holds
the round, the node id (and the site's id where its reply names it), the
message type, the direction, the payload's bytes and, where the message
carries a model, its SHA-256; never a scan's name, path or data.

``bytes`` is the payload: the summed serialized buffers of its arrays (numpy
``.npy`` bytes, as Flower carries them) plus its config and metric records'
keys and values (strings and bytes by length, numbers 8 bytes each); the
transport's framing is not counted. ``sha256`` hashes each array's raw bytes
(C order) in the record's order, so the model sent in round r+1 hashes as
the global model recorded after round r.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG, log_to_file
from brainfl.federation.bookkeeping import error_summary, site_id
from brainfl.federation.setup import QUERY
from brainfl.report.results import AUDIT_JSONL

MODEL_KEYS = ("arrays", "fitins.parameters", "fitres.parameters")  # a message's model, if it carries one


def arrays_sha256(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 of the arrays' raw bytes (C order), in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value.encode() if isinstance(value, str) else value)
    if isinstance(value, list):
        return sum(_value_bytes(item) for item in value)
    return 8


def payload_bytes(content: RecordDict) -> int:
    """The payload's size: its arrays' serialized buffers, its config and metric records' keys and values."""
    arrays = sum(len(array.data) for record in content.array_records.values() for array in record.values())
    records = [*content.config_records.values(), *content.metric_records.values()]
    return arrays + sum(len(key) + _value_bytes(value) for record in records for key, value in record.items())


def message_round(message: Message) -> int | None:
    """The run's round a message belongs to: its config's ``global-round``, else its group id; None for
    the queries before the first and after the last round."""
    for config in message.content.config_records.values() if message.has_content() else ():
        if "global-round" in config:
            return int(config["global-round"])
    group = message.metadata.group_id
    return int(group) if group.isdigit() else None


def message_context(message: Message) -> dict[str, Any]:
    """What a sent message is about, for its line and its reply's: its round; for a query, what it asks."""
    configs = message.content.config_records.values() if message.has_content() else ()
    query = next((c[QUERY] for c in configs if QUERY in c), None)
    return {"round": message_round(message), **({"query": str(query)} if query is not None else {})}


def message_entry(message: Message, direction: str, node: int, about: Mapping[str, Any]) -> dict[str, Any]:
    """One audit line's fields for ``message``: ``about`` (:func:`message_context` of the message sent, for
    a reply too), the node at the other end (or the site's own), the payload's bytes and model hash."""
    entry: dict[str, Any] = {
        "event": "message",
        **about,
        "node": int(node),
        "type": message.metadata.message_type,
        "direction": direction,
    }
    if message.has_error():
        return {**entry, "bytes": 0, "error": error_summary(message.error)}
    content = message.content
    site = site_id(next(iter(content.metric_records.values()), {}))
    model = next((content[key] for key in MODEL_KEYS if key in content.array_records), None)
    return {
        **entry,
        **({"site": site} if site is not None else {}),
        "bytes": payload_bytes(content),
        **({"sha256": arrays_sha256(model.to_numpy_ndarrays())} if isinstance(model, ArrayRecord) else {}),
    }


def audit_line(entry: Mapping[str, Any]) -> str:
    """``entry`` as one JSON line with the UTC time first."""
    stamped = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    return json.dumps(stamped, separators=(",", ":"), allow_nan=False) + "\n"


class AuditLog:
    """``audit.jsonl`` of a run: each line appended with one ``write`` to the file, so an interrupted
    run leaves whole lines."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / AUDIT_JSONL

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, audit_line(entry).encode())
        finally:
            os.close(descriptor)


class AuditedGrid(Grid):
    """A coordinator's grid that writes every message it sends and every reply it receives to an
    :class:`AuditLog`; everything else is the wrapped grid's."""

    def __init__(self, grid: Grid, log: AuditLog) -> None:
        self.grid = grid
        self.log = log
        self.pending: dict[str, dict[str, Any]] = {}  # message id -> what it is about, for its reply

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def _sent(self, messages: list[Message]) -> list[dict[str, Any]]:
        abouts = [message_context(message) for message in messages]
        for message, about in zip(messages, abouts, strict=True):
            self.log.append(message_entry(message, "sent", message.metadata.dst_node_id, about))
        return abouts

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            about = self.pending.pop(reply.metadata.reply_to_message_id, None) or message_context(reply)
            self.log.append(message_entry(reply, "received", reply.metadata.src_node_id, about))
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        abouts = self._sent(messages)
        ids = list(self.grid.push_messages(messages))
        self.pending.update(zip(ids, abouts, strict=False))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        abouts = self._sent(messages)
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        self.pending.update((m.metadata.message_id, a) for m, a in zip(messages, abouts, strict=True))
        return self._received(replies)


def site_audit_mod(
    log_path: Callable[[Context], Path],
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A ClientApp mod that logs, into the site's log at ``log_path(context)``, one audit line for each
    message the site receives and each reply it sends (as they cross the wire: outside every other mod)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            path = log_path(context)
        except BrainFLError:  # bad settings: the handler says so in its reply
            return call_next(msg, context)
        about = message_context(msg)
        log_entry(path, message_entry(msg, "received", context.node_id, about))
        try:
            reply = call_next(msg, context)
        except Exception as error:  # Flower replies with the error: its class is what the audit keeps
            failed = {"event": "message", **about, "node": context.node_id, "type": msg.metadata.message_type}
            log_entry(path, {**failed, "direction": "sent", "bytes": 0, "error": type(error).__name__})
            raise
        log_entry(path, message_entry(reply, "sent", context.node_id, about))
        return reply

    return mod


def log_entry(path: Path, entry: Mapping[str, Any]) -> None:
    """One ``audit {...}`` line in the site's log."""
    with log_to_file(path):
        LOG.info("audit %s", audit_line(entry).rstrip("\n"))
