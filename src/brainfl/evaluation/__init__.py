"""Scoring predictions: the metrics, bootstrap intervals, calibration of the temperature, the server's
central test-set evaluation, ``brainfl evaluate`` on a labelled folder and its figures."""
