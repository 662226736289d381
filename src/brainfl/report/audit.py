"""The run's audit trail read back: who took part in which round, from ``audit.jsonl``.

The coordinator writes ``audit.jsonl`` (:mod:`brainfl.federation.audit`): one
JSON line per message and reply, and one ``round`` line per round naming the
sites whose updates were aggregated and those dropped, with the reason.
:func:`participation` turns the round lines into a grid, a row per round and
a column per site; a line cut short by an interrupted run is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from brainfl.report.results import AUDIT_JSONL

AGGREGATED = "aggregated"


def read_audit(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``audit.jsonl``, in order (empty when absent; unreadable lines skipped)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _site_label(participant: dict[str, Any], sites: dict[int, int]) -> tuple[tuple[int, int], str]:
    """(sort key, column) of a participant: its site where known (its line or a reply), else its node."""
    node = int(participant.get("node", -1))
    site = participant.get("site")
    site = sites.get(node) if site is None else int(site)
    return ((0, site), f"site {site}") if site is not None else ((1, node), f"node {node}")


def participation(output_dir: Path) -> pd.DataFrame | None:
    """Per round (rows) and site (columns): ``aggregated``, ``dropped: <reason>``, or empty when the site
    got no train message that round; None without round lines in ``audit.jsonl``."""
    entries = read_audit(output_dir / AUDIT_JSONL)
    sites = {int(e["node"]): int(e["site"]) for e in entries if e.get("node") is not None and "site" in e}
    cells: dict[int, dict[str, str]] = {}
    order: dict[str, tuple[int, int]] = {}
    for entry in entries:
        if entry.get("event") != "round" or not (entry.get(AGGREGATED) or entry.get("dropped")):
            continue
        row = cells[int(entry["round"])] = {}  # a round run again after a resume: its last line counts
        for participant in entry.get(AGGREGATED, []):
            key, column = _site_label(participant, sites)
            order[column], row[column] = key, AGGREGATED
        for participant in entry.get("dropped", []):
            key, column = _site_label(participant, sites)
            order[column], row[column] = key, f"dropped: {participant.get('reason', '')}"
    if not cells:
        return None
    table = pd.DataFrame.from_dict(cells, orient="index").fillna("")
    table = table[sorted(order, key=order.__getitem__)].sort_index()
    table.index.name = "round"
    return table
