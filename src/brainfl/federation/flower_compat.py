"""The few Flower internals brainfl relies on, imported in this one place.

Flower's public API covers almost everything the app does; these names come
from modules Flower does not document as public. Keeping them here means a
Flower upgrade that moves one breaks exactly one import, which
``tests/test_flower_compat.py`` catches first.

- ``aggregate_metricrecords``, ``validate_message_reply_consistency``: the
  helpers Flower's own strategies use to average metrics and check replies.
- ``recorddict_compat``: conversions between the Message API's ``RecordDict``
  and the legacy ``FitIns``/``FitRes`` of the SecAgg+ workflow.
- ``KEY_CLIPPING_NORM``: the config key under which Flower's DP wrappers send
  the clipping norm to the client-side clipping mods.
- ``SECAGG_CONFIGS_KEY``: the config record that marks a SecAgg+ message.
"""

from __future__ import annotations

from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS_KEY
from flwr.compat.common import recorddict_compat
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    validate_message_reply_consistency,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

__all__ = [
    "KEY_CLIPPING_NORM",
    "SECAGG_CONFIGS_KEY",
    "aggregate_metricrecords",
    "recorddict_compat",
    "validate_message_reply_consistency",
]
