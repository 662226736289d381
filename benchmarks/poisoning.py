"""Poisoned sites for tests and benchmarks: a ClientApp mod, and federations run with it.

The product has no attack code. A test or benchmark that needs a malicious
site installs :func:`poisoning_mod` in front of the site's own ClientApp
(``brainfl.federation.client_app.client_app_with(poisoning_mod(...))``): the chosen
sites train honestly, then replace the weights they send by a poisoned
update relative to the weights they received:

* ``sign-flip``: ``start - scale * update`` (the update reversed and amplified),
* ``noise``: ``start +`` Gaussian noise of standard deviation ``scale * (std(update) + 1e-3)``,
* ``nan``: every weight NaN.

The mod wraps the whole app, so a poisoned update skips the app's
client-side DP clipping, as an attacker who controls its own site would.
It acts on the Message API's train replies only (not on SecAgg+'s masked
legacy replies).

Run as a script, it trains a federation on Flower's simulation engine
(``flwr.simulation.run_simulation``) with the project's ServerApp and that
ClientApp; ``run_simulation`` takes no run config, so :func:`simulate` hands
the run's settings to both apps itself. Its outputs are a normal run's::

    python3 benchmarks/poisoning.py --data-dir ../shared/data/brain-tumor-mri \\
        --output-dir benchmarks/runs/poisoned --sites 5 --rounds 3 --poison sign-flip --poisoned-sites 0 \\
        --run-config "strategy='median'"
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from brainfl.core.logs import LOG

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
KINDS = ("sign-flip", "noise", "nan")
DEFAULT_SCALE = 10.0
Mod = Callable[[Message, Context, ClientAppCallable], Message]


def poisoned_arrays(
    kind: str,
    received: Sequence[np.ndarray],
    trained: Sequence[np.ndarray],
    scale: float = DEFAULT_SCALE,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """The weights a poisoned site sends instead of ``trained``, computed in float64, cast back."""
    if kind not in KINDS:
        raise ValueError(f"unknown poisoning '{kind}' (choose one of: {', '.join(KINDS)})")
    rng = rng if rng is not None else np.random.default_rng(0)
    poisoned = []
    for start, end in zip(received, trained, strict=True):
        update = end.astype(np.float64) - start
        if kind == "sign-flip":
            update = -scale * update
        elif kind == "noise":
            update = rng.normal(0.0, scale * (update.std() + 1e-3), size=update.shape)
        else:
            update = np.full(update.shape, np.nan)
        poisoned.append((start + update).astype(end.dtype))
    return poisoned


def poisoning_mod(kind: str, sites: Collection[int], scale: float = DEFAULT_SCALE, seed: int = 0) -> Mod:
    """A ClientApp mod: the train replies of ``sites`` (their ``partition-id``) carry poisoned weights.

    The noise of site ``s`` in round ``r`` is drawn from ``default_rng((seed, s, r))``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown poisoning '{kind}' (choose one of: {', '.join(KINDS)})")
    poisoned_sites = frozenset(int(site) for site in sites)

    def poison(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        site = int(context.node_config.get("partition-id", -1))
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error() or site not in poisoned_sites:
            return reply
        if "arrays" not in msg.content.array_records or "arrays" not in reply.content.array_records:
            raise ValueError("poisoning_mod acts on the Message API's train replies, not on SecAgg+'s")
        config = msg.content["config"]
        server_round = int(config.get("global-round", config.get("server-round", 0)))
        sent = reply.content["arrays"]
        arrays = poisoned_arrays(
            kind,
            msg.content["arrays"].to_numpy_ndarrays(),
            sent.to_numpy_ndarrays(),
            scale,
            np.random.default_rng((seed, site, server_round)),
        )
        LOG.warning("site %d round %d: sending a '%s' update (poisoning mod)", site, server_round, kind)
        reply.content["arrays"] = ArrayRecord(
            {key: Array(array) for key, array in zip(sent.keys(), arrays, strict=True)}
        )
        return reply

    return poison


def configured(context: Context, run_config: Mapping[str, Any]) -> Context:
    """``context`` with ``run_config`` (Flower refuses changes to a context's run config)."""
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config=dict(run_config),
    )


def run_config_mod(run_config: Mapping[str, Any]) -> Mod:
    """A ClientApp mod that gives the app ``run_config`` (``run_simulation`` passes none)."""
    frozen = dict(run_config)

    def with_run_config(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        return call_next(msg, configured(context, frozen))

    return with_run_config


def simulate(run_config: Mapping[str, Any], num_sites: int, client_mods: Sequence[Mod] = ()) -> None:
    """Run the project's ServerApp and ClientApp (``client_mods`` in front) on Flower's simulation engine."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from brainfl.federation.client_app import client_app_with
    from brainfl.federation.server_app import app as project_server_app

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        project_server_app(grid, configured(context, run_config))

    # Ray workers unpickle the mods by module name: they need benchmarks/ on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    client_app = client_app_with(run_config_mod(run_config), *client_mods)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_sites)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poison", choices=KINDS, default=None, help="none: an honest federation")
    parser.add_argument("--poisoned-sites", type=int, nargs="*", default=[0], help="partition ids")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    parser.add_argument("--run-config", action="append", default=[], help="as run.sh takes it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from brainfl.data.sites import load_run_dataset
    from brainfl.settings.run_config import settings_from_args
    from brainfl.settings.run_settings import settings_from_config

    args = parse_args(argv)
    output_dir = args.output_dir.expanduser().resolve()
    options = {  # this script's options win over --run-config, as run.sh's do
        "data-dir": str(Path(args.data_dir).expanduser().resolve()),
        "output-dir": str(output_dir),
        "num-partitions": args.sites,
        "num-server-rounds": args.rounds,
        "wait-for-sites": args.sites,  # every site is awaited before round 1, as run.sh does
    }
    settings = settings_from_config({**settings_from_args(ROOT, args.run_config).to_config(), **options})
    load_run_dataset(settings)  # decode and cache the images once, before the sites start (run.sh too)
    mods = [poisoning_mod(args.poison, args.poisoned_sites, args.scale, settings.seed)] if args.poison else []
    simulate(settings.to_config(), args.sites, mods)
    server_log = output_dir / "logs" / "server.log"
    if not server_log.is_file() or "outputs written to" not in server_log.read_text():
        sys.exit(f"poisoning.py: error: the run did not finish; see {server_log}")
    print(f"outputs: {output_dir}")


if __name__ == "__main__":
    main()
