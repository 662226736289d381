"""brainfl: federated brain-tumor MRI classification with Flower and Keras."""

import os

# TensorFlow's C++ start-up chatter (CPU feature notes) drowns the run's own lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
