"""The report's tables: pandas frames as rows of text, counts as integers and scores with 4 decimals."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from brainfl.report.results import CLOCKS

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass
class Table:
    """A table as the template shows it: header and rows of text (the first column is the key)."""

    columns: list[str]
    rows: list[list[str]]
    text: bool = False  # every column left-aligned text


def _cell(value: Any, decimals: int) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{decimals}f}"
    return str(value)


COUNT_COLUMNS = frozenset(
    ("round", "support", "num_train", "num_val", "sites_trained", "sites_failed", "rounds reported")
)


def _whole(column: str, values: pd.Series) -> bool:
    """Whether a column holds counts: whole numbers, named as counts or not all within [0, 1]."""

    numbers = pd.to_numeric(values, errors="coerce").dropna()
    numbers = numbers[numbers.abs() != math.inf]
    if numbers.empty or not (numbers == numbers.round()).all():
        return False
    return column in COUNT_COLUMNS or pd.api.types.is_integer_dtype(values) or bool((numbers.abs() > 1).any())


def frame_table(frame: pd.DataFrame, index: bool = True) -> Table:
    """A DataFrame as a :class:`Table`: count columns as integers, others with 4 decimals."""
    if index:
        frame = frame.reset_index()
    decimals = [
        0 if _whole(str(column), frame[column]) else 1 if column in CLOCKS else 4 for column in frame.columns
    ]
    rows = [
        [_cell(value, places) for value, places in zip(row, decimals, strict=True)]
        for row in frame.itertuples(index=False)
    ]
    return Table([str(c) for c in frame.columns], rows)
