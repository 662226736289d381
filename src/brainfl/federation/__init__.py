"""The Flower app: ServerApp and ClientApp, strategies and the bookkeeping of site replies, privacy
(DP, SecAgg+), the setup, calibration and personalization queries, FedBN, a site's local update, the
recorder, credentials for TLS and node authentication, and ``brainfl prepare``."""
