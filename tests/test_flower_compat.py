"""The Flower internals brainfl uses still exist and still behave as the app expects."""

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters

from brainfl.federation import flower_compat


def test_every_adapted_name_resolves() -> None:
    for name in flower_compat.__all__:
        assert getattr(flower_compat, name) is not None, name


def test_metric_records_average_by_the_weight_key() -> None:
    records = [
        RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 1})}),
        RecordDict({"metrics": MetricRecord({"loss": 4.0, "num-examples": 3})}),
    ]
    averaged = flower_compat.aggregate_metricrecords(records, "num-examples")
    assert averaged["loss"] == 3.25


def test_legacy_fitins_round_trip_keeps_weights_and_config() -> None:
    import numpy as np

    weights = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    fit_ins = FitIns(ndarrays_to_parameters(weights), {"learning-rate": 0.5})
    content = flower_compat.recorddict_compat.fitins_to_recorddict(fit_ins, keep_input=True)
    back = flower_compat.recorddict_compat.recorddict_to_fitins(content, keep_input=True)
    assert back.config["learning-rate"] == 0.5
    assert isinstance(content, RecordDict)


def test_clipping_norm_key_is_what_flowers_dp_wrapper_sends() -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    from inprocess import InProcessGrid

    wrapper = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(), noise_multiplier=0.1, clipping_norm=2.0, num_sampled_clients=2
    )
    messages = list(wrapper.configure_train(1, ArrayRecord([]), ConfigRecord({}), InProcessGrid(2, {})))
    assert messages and all(m.content["config"][flower_compat.KEY_CLIPPING_NORM] == 2.0 for m in messages)
