"""The pinned protobuf must satisfy both TensorFlow and Flower: both work in one process."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np


def test_protobuf_is_below_7_and_tensorflow_and_flower_work_together():
    assert int(version("protobuf").split(".")[0]) < 7
    import tensorflow as tf
    from flwr.app import ArrayRecord
    from flwr.common.serde import array_from_proto, array_to_proto

    record = ArrayRecord([np.arange(6, dtype=np.float32).reshape(2, 3)])
    restored = array_from_proto(array_to_proto(record["0"])).numpy()
    assert float(tf.reduce_sum(tf.constant(restored))) == 15.0
