"""The audit trail: each message and reply as one whole line, errors without their text, participation."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from brainfl.federation.audit import AuditedGrid, AuditLog, arrays_sha256, payload_bytes
from brainfl.report.audit import participation, read_audit
from brainfl.report.results import AUDIT_JSONL
from inprocess import NODE_BASE, InProcessGrid

SCAN = "/hospital/scans/patient-17/Tr-gl_0001.jpg"  # what a site's error may name; never in the audit


def answering_app() -> ClientApp:
    """Site 0 answers a query with its id; site 1 fails with an exception naming one of its scans."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            reason = f"<class 'brainfl.core.errors.BrainFLError'>:<'cannot read {SCAN}'>"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        return Message(RecordDict({"metrics": MetricRecord({"site-id": 0, "n": 3})}), reply_to=msg)

    return app


def test_every_message_and_reply_is_one_line_with_its_bytes_hash_and_an_error_without_its_text(tmp_path):
    grid = AuditedGrid(InProcessGrid(2, {}, client_app=answering_app()), AuditLog(tmp_path))
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float64)]
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"query": "calibration"})})
    messages = [
        Message(content, dst_node_id=NODE_BASE + site, message_type=MessageType.QUERY) for site in (0, 1)
    ]
    replies = list(grid.send_and_receive(messages))
    assert len(replies) == 2  # the wrapped grid's replies, passed on

    text = (tmp_path / AUDIT_JSONL).read_text()
    assert SCAN not in text and "Tr-gl" not in text and "cannot read" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(e["direction"], e["node"]) for e in lines] == [
        ("sent", 1000),
        ("sent", 1001),
        ("received", 1000),
        ("received", 1001),
    ]
    assert all(e["query"] == "calibration" and e["round"] is None and e["type"] == "query" for e in lines)
    sent = lines[0]
    assert sent["sha256"] == arrays_sha256(arrays) == arrays_sha256([a.copy() for a in arrays])
    assert sent["sha256"] != arrays_sha256(arrays[:1])
    npy = sum(len(array.data) for array in ArrayRecord(arrays).values())  # the arrays as Flower carries them
    assert sent["bytes"] == payload_bytes(content) == npy + len("query") + len("calibration")
    assert lines[2]["site"] == 0 and lines[2]["bytes"] == len("site-id") + 8 + len("n") + 8
    assert lines[3]["error"] == "error: client app raised exception (BrainFLError)"


def test_participation_is_a_grid_of_rounds_and_sites_from_whole_lines(tmp_path):
    log = AuditLog(tmp_path)
    log.append({"event": "message", "round": None, "node": 7, "site": 2, "direction": "received"})
    log.append({"event": "round", "round": 0, "aggregated": [], "dropped": []})
    log.append({"event": "round", "round": 1, "aggregated": [{"node": 5, "site": 0}], "dropped": []})
    dropped = [{"node": 7, "site": None, "reason": "missing reply"}, {"node": 9, "reason": "error: unknown"}]
    log.append({"event": "round", "round": 2, "aggregated": [{"node": 5, "site": 0}], "dropped": dropped})
    log.append({"event": "round", "round": 1, "aggregated": [{"node": 5, "site": 0}, {"node": 7, "site": 2}]})
    with open(tmp_path / AUDIT_JSONL, "a") as handle:
        handle.write('{"event": "round", "round": 3, "aggr')  # a run killed mid-write
    assert len(read_audit(tmp_path / AUDIT_JSONL)) == 5

    table = participation(tmp_path)
    assert list(table.columns) == ["site 0", "site 2", "node 9"]  # node 7 is site 2 (its setup reply)
    assert table.index.tolist() == [1, 2]  # round 0 trained nobody
    assert table.loc[1].tolist() == ["aggregated", "aggregated", ""]  # round 1 again after a resume
    assert table.loc[2].tolist() == ["aggregated", "dropped: missing reply", "dropped: error: unknown"]
    assert participation(tmp_path / "elsewhere") is None
