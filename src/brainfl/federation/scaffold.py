"""SCAFFOLD (Karimireddy et al. 2020): control variates that correct each site's drift under label skew.

The server keeps a control variate ``c`` (one array per model array, zeros at
first) and sends it with the global model ``x`` in every train message
(:data:`CONTROL`). A site keeps its own ``c_i`` in Flower's ``Context.state``
(:data:`SITE_CONTROL`, zeros until it has trained once), the only place besides
the disk that survives between messages. In a round the site

1. trains as usual from ``x`` with ``c - c_i`` added to every gradient (a linear
   term in the loss, :class:`brainfl.model.training.AnchoredModel`), in ``K``
   SGD steps at the round's learning rate ``lr`` with momentum ``m``, to ``y_i``;
2. sets ``c_i+ = c_i - c + (x - y_i) / (K * lr / (1 - m))``, the paper's option II:
   the mean corrected gradient along its own steps, minus the correction (with
   momentum a step moves ``lr / (1 - m)`` times the gradient once the momentum
   has built up);
3. keeps ``c_i+`` and replies with its model and ``c_i+ - c_i``
   (:data:`CONTROL_UPDATE`).

Option II is measured on the trajectory the site just took, at no extra cost;
option I (the gradient at ``x``, one more pass) is a round old when it is used,
and under label skew early rounds move the model far in a round: with it the
global model's accuracy collapsed in the round the correction started. The
correction assumes gradient steps, so SCAFFOLD needs ``optimizer='sgd'``
(AdamW would rescale ``c - c_i`` to a full step per weight).

The server averages the models as FedAvg does (by example count) and sets
``c <- c + (1 / N) * sum of the answering sites' updates``, N the sites that
joined. Arrays that are statistics, not trained (BatchNorm moving mean and
variance), have no control variate (zeros) and are averaged as in FedAvg. The
server's ``c`` lives in the ServerApp process: a resumed run starts it from zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from brainfl.federation.bookkeeping import SiteBookkeeping, example_weighted_average

CONTROL = "scaffold-control"  # the server's control variate, in every train message
CONTROL_UPDATE = "scaffold-control-update"  # a site's c_i+ - c_i, in its train reply
SITE_CONTROL = "scaffold-site-control"  # a site's own control variate, in its Context.state


def trained_only(arrays: Sequence[np.ndarray], trainable: Sequence[bool]) -> list[np.ndarray]:
    """The arrays of trained weights among a model's arrays (in ``model.weights`` order)."""
    return [array for array, is_trained in zip(arrays, trainable, strict=True) if is_trained]


def all_arrays(trained: Sequence[np.ndarray], like: Sequence[np.ndarray], trainable: Sequence[bool]):
    """Arrays in ``model.weights`` order: ``trained`` where trained, zeros (shaped as ``like``) elsewhere."""
    values = iter(trained)
    return [
        next(values) if is_trained else np.zeros_like(array)
        for array, is_trained in zip(like, trainable, strict=True)
    ]


class SiteControl:
    """A site's control variate in its ``Context.state``, over the model's trained weights."""

    def __init__(self, state: RecordDict, trainable: Sequence[bool], weights: Sequence[np.ndarray]) -> None:
        self.state = state
        self.trainable = list(trainable)
        kept = state.get(SITE_CONTROL)
        zeros = [np.zeros_like(array, dtype=np.float32) for array in trained_only(weights, self.trainable)]
        self.current = kept.to_numpy_ndarrays() if isinstance(kept, ArrayRecord) else zeros

    def correction(self, server_control: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``c - c_i`` per trained weight: what is added to every gradient of this round."""
        return [
            c - own for c, own in zip(trained_only(server_control, self.trainable), self.current, strict=True)
        ]

    def renew(
        self,
        received: Sequence[np.ndarray],
        trained: Sequence[np.ndarray],
        server_control: Sequence[np.ndarray],
        step_scale: float,
    ) -> list[np.ndarray]:
        """Keep ``c_i+ = c_i - c + (x - y_i) / step_scale`` (``received`` is ``x``, ``trained`` is
        ``y_i``, both in ``model.weights`` order; ``step_scale``: how far the steps moved per unit of
        gradient, ``K * lr / (1 - m)``); the update ``c_i+ - c_i`` in ``model.weights`` order, for the
        reply."""
        moved = [
            (start - end) / step_scale
            for start, end in zip(
                trained_only(received, self.trainable), trained_only(trained, self.trainable), strict=True
            )
        ]
        update = [
            step - c for step, c in zip(moved, trained_only(server_control, self.trainable), strict=True)
        ]
        renewed = [own + change for own, change in zip(self.current, update, strict=True)]
        self.state[SITE_CONTROL] = ArrayRecord([np.asarray(array, dtype=np.float32) for array in renewed])
        self.current = renewed
        return all_arrays(update, trained, self.trainable)


class BrainScaffold(SiteBookkeeping, FedAvg):
    """SCAFFOLD's server: FedAvg of the models, and the control variate sent and updated each round."""

    reply_arrays = 2  # the model and the site's control update

    def __init__(self, *, num_sites: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_sites = num_sites
        self.control: list[np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages, each with the server's control variate."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = self.server_control(arrays.to_numpy_ndarrays())
        for message in messages:
            message.content[CONTROL] = ArrayRecord(control)
        return messages

    def server_control(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The control variate ``c`` sent with this round's model (at first zeros, shaped as ``arrays``)."""
        if self.control is None:
            self.control = [np.zeros_like(array, dtype=np.float32) for array in arrays]
        return [np.array(array) for array in self.control]

    def aggregate_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """The example-weighted average of the models; ``c`` moves by the sites' updates over N."""
        updates = [reply.content[CONTROL_UPDATE].to_numpy_ndarrays() for reply in replies]
        self.control = [
            control + sum(site[index] for site in updates) / self.num_sites
            for index, control in enumerate(self.control)
        ]
        return ArrayRecord(example_weighted_average(replies, self.arrayrecord_key))
