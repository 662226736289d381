"""What one message costs a site in a fresh process, phase by phase, as on Flower's deployment engine.

A SuperNode starts a new ``flwr-clientapp`` process for every message, so a
site pays Python, the imports, the data load, the model build and Keras'
tracing every round besides training. Each run here is such a fresh process
(``--child``): it imports ``brainfl.federation.client_app`` as Flower does and hands its
ClientApp (mods included) a train message with the run's initial weights,
then, where that message did not score the received model itself (and
unless ``--train-only``), an evaluate message. No app logic is copied: phase
ends are marked by wrappers around what ``client_app`` calls (``site_data``,
``model_for``, ``predict_proba``, ``local_update``) and the model's ``fit``
and first training step. Phases, in the order they ran: imports (from the
interpreter's start), data, model, validation predict and metrics, compile
(weights set, compiled, tf.data made), first step (traced unless eager),
training, precise BN, reply, exit; each in wall and CPU seconds (the
child's own, all threads, from ``os.wait4``: steadier on a shared machine).

Workloads: ``tiny`` is the load test's (``load_test.py``: 20 images per
class and split, 10 partitions, image-size=32 batch-size=16 local-epochs=1),
``real`` the full dataset at 4 IID sites with the defaults. The parent first
warms what later rounds find on disk (decoded images, partitions) and writes
the initial weights. ``--parallel N`` starts N processes at once (sites
0..N-1, as N SuperNodes sharing the machine every round) and prints the
batch's wall and CPU seconds; ``--importtime`` adds a run under ``python3 -X
importtime`` listing the imports each phase paid; ``--env KEY=VALUE`` is for
the children only::

    python3 benchmarks/cold_start.py --repeat 3 --label before --out benchmarks/runs/cold_start.csv
    python3 benchmarks/cold_start.py --workload tiny --parallel 10 --env TF_NUM_INTRAOP_THREADS=1
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

WORKLOADS = {  # per class (None: every image), partitions, run-config overrides
    "tiny": (20, 10, {"image-size": 32, "batch-size": 16, "local-epochs": 1}),
    "real": (None, 4, {}),
}
MARKER = "cold-start phase: "
RSS = "peak RSS MiB"


def child(spec_file: str, site: int) -> None:
    """One fresh process: import the app, answer a train (and an evaluate) message, print the marks."""
    spec = json.loads(Path(spec_file).read_text())
    marks: dict[str, tuple[float, float]] = {}  # phase: its end (wall time, CPU since process start)

    def mark(phase: str) -> None:  # the end of ``phase``
        if phase not in marks:
            marks[phase] = time.time(), time.process_time()
            print(MARKER + phase, file=sys.stderr, flush=True)

    from brainfl.federation import client_app  # what flwr-clientapp loads

    mark("imports")
    _instrument(client_app, mark, marks)
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1000, 1  # as flwr-clientapp sets
    with np.load(spec["weights"]) as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    node_config = {"partition-id": site, "num-partitions": spec["partitions"], "log-dir": spec["log_dir"]}
    context = Context(
        run_id=1, node_id=1000, node_config=node_config, state=RecordDict(), run_config=spec["run_config"]
    )

    def send(message_type: str, arrays: ArrayRecord, config: dict) -> Message:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
        message = Message(content, dst_node_id=1000, message_type=message_type)
        message.metadata.__dict__.update(_message_id=message_type, _run_id=1)  # (a reply points at it)
        reply = client_app.app(message, context)
        assert not reply.has_error(), reply.error
        return reply

    reply = send("train", ArrayRecord(weights), spec["train_config"])
    mark("reply")
    if not spec["train_only"] and "validation predict" not in marks:  # the train message did not validate
        send("evaluate", reply.content["arrays"], {**spec["train_config"], "server-round": 1})
        mark("validation metrics")
    print(json.dumps(marks), flush=True)


def _instrument(client_app, mark, marks) -> None:
    """Mark the phase ends by wrapping what ``client_app`` calls; the app's own code runs unchanged.

    The validation may come before training (in the train message) or after it
    (an evaluate message): ``validation metrics`` ends where training starts, or
    with the evaluate message.
    """

    def wrap(name: str, module: str, before=None, after=None) -> None:
        owner = client_app if hasattr(client_app, name) else importlib.import_module(module)
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                before()
            result = original(*args, **kwargs)
            if after:
                after(result)
            return result

        setattr(owner, name, wrapper)

    def model_built(bundle) -> None:
        mark("model")
        model = bundle.trainable
        if "fit" in vars(model):  # (model_for returns the same bundle to the evaluate message)
            return
        make_train_function, fit = model.make_train_function, model.fit

        def traced_once(*args, **kwargs):
            result = make_train_function(*args, **kwargs)
            mark("compile")
            step = model.train_function

            def first_step(iterator):
                logs = step(iterator)
                mark("first step")
                model.train_function = step
                return logs

            model.train_function = first_step
            return result

        def fitted(*args, **kwargs):
            history = fit(*args, **kwargs)
            mark("training")
            return history

        model.make_train_function, model.fit = traced_once, fitted

    def training_starts() -> None:
        if "validation predict" in marks:
            mark("validation metrics")

    wrap("site_data", "brainfl.data.sites", after=lambda _: mark("data"))
    wrap("model_for", "brainfl.model.process_cache", after=model_built)
    wrap("predict_proba", "brainfl.model.training", after=lambda _: mark("validation predict"))
    wrap(
        "local_update",
        "brainfl.federation.site_training",
        before=training_starts,
        after=lambda _: mark("precise BN"),
    )


def prepare(workload: str, data_dir: Path, work_dir: Path, train_only: bool, sites: int) -> Path:
    """Warm the caches a SuperNode finds after round 1, write the initial weights; return the spec file."""
    import numpy as np

    from brainfl.data.sites import load_run_dataset, site_data
    from brainfl.federation.bookkeeping import round_settings
    from brainfl.model.process_cache import initial_weights
    from brainfl.settings.run_settings import default_run_config, settings_from_config
    from subset import make_subset

    per_class, partitions, overrides = WORKLOADS[workload]
    if per_class is not None:
        data_dir = make_subset(data_dir, work_dir / f"{workload}-data", per_class)
    run_config = default_run_config() | overrides | {"num-partitions": partitions}
    run_config["data-dir"] = str(Path(data_dir).resolve())
    settings = settings_from_config(run_config)
    class_names = tuple(load_run_dataset(settings).train.class_names)
    for site in range(min(sites, partitions)):
        site_data(settings, {"partition-id": site, "num-partitions": partitions}, class_names)
    weights = work_dir / f"{workload}-weights.npz"
    np.savez(weights, *initial_weights(settings, class_names))
    spec = {
        "run_config": run_config,
        "partitions": partitions,
        "train_config": round_settings(1, lambda _: settings.training.learning_rate, class_names),
        "weights": str(weights),
        "log_dir": str(work_dir / "logs"),
        "train_only": train_only,
    }
    path = work_dir / f"{workload}-spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_children(
    spec: Path, work_dir: Path, count: int = 1, importtime: bool = False, env: dict | None = None
) -> tuple[list[dict], tuple[float, float], Path]:
    """Run ``count`` fresh children at once (sites 0, 1, ...); return each one's phases (wall, CPU
    seconds), the batch's wall and summed CPU seconds, and the first child's stderr file."""
    partitions = json.loads(spec.read_text())["partitions"]
    flags, started, children = ["-X", "importtime"] if importtime else [], time.time(), {}
    for index in range(count):
        out, err = (work_dir / f"child{index}{'-importtime' * importtime}.{kind}" for kind in ("out", "err"))
        command = [sys.executable, *flags, __file__, "--child", str(spec), "--site", str(index % partitions)]
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                command, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})}
            )
        children[process.pid] = (index, out, err)
    runs, cpu = [{}] * count, 0.0
    while children:
        pid, status, usage = os.wait4(-1, 0)
        ended, (index, out, err) = time.time(), children.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"child failed ({status}), see {err}")
        marks = json.loads(out.read_text().strip().splitlines()[-1])
        total_cpu = usage.ru_utime + usage.ru_stime
        marks["exit"], phases, previous = (ended, total_cpu), {}, (started, 0.0)
        for phase, end in sorted(marks.items(), key=lambda item: item[1][0]):  # in the order they ended
            phases[phase], previous = (end[0] - previous[0], end[1] - previous[1]), end
        phases["total"], phases[RSS] = (ended - started, total_cpu), (usage.ru_maxrss / 1024, 0.0)
        runs[index], cpu = phases, cpu + total_cpu
    return runs, (time.time() - started, cpu), work_dir / f"child0{'-importtime' * importtime}.err"


def imports_per_phase(stderr: Path) -> dict[str, list[tuple[str, float]]]:
    """Seconds of ``-X importtime`` self time per top-level package, most first, in each phase."""
    found, pending = {}, defaultdict(float)
    for line in stderr.read_text().splitlines():
        if line.startswith(MARKER):  # the imports since the last marker belong to the phase that ended
            found[line[len(MARKER) :]], pending = pending, defaultdict(float)
        elif match := re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line):
            pending[match[2].split(".")[0]] += int(match[1]) / 1e6
    found["exit"] = pending
    return {phase: sorted(seconds.items(), key=lambda item: -item[1]) for phase, seconds in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--site", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/brain-tumor-mri"))
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (medians)")
    parser.add_argument("--parallel", type=int, default=1, help="processes at once, sites 0..N-1 (a round)")
    parser.add_argument("--train-only", action="store_true", help="no evaluate message")
    parser.add_argument("--importtime", action="store_true", help="also list the imports each phase pays")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the children (repeatable)")
    parser.add_argument("--label", default="", help="a label for the CSV rows (e.g. before, after)")
    parser.add_argument("--out", type=Path, help="append every run's phases to this CSV")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "brainfl-cold-start")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.site)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    env = dict(pair.split("=", 1) for pair in args.env)
    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    runs: dict[str, list[list[dict]]] = {}
    for workload in workloads:
        spec = prepare(workload, args.data_dir, args.work_dir, args.train_only, args.parallel)
        batches = [run_children(spec, args.work_dir, args.parallel, env=env) for _ in range(args.repeat)]
        runs[workload] = [children for children, _, _ in batches]
        if args.parallel > 1:
            wall, cpu = (statistics.median(batch[1][i] for batch in batches) for i in (0, 1))
            print(f"{workload}: {args.parallel} processes at once: {wall:.1f} s wall, {cpu:.1f} CPU-s in all")
        if args.importtime:
            stderr = run_children(spec, args.work_dir, 1, True, env)[2]
            for phase, paid in imports_per_phase(stderr).items():
                most = ", ".join(f"{name} {seconds:.2f}" for name, seconds in paid[:8] if seconds >= 0.01)
                print(f"imports in {workload} {phase}: {sum(s for _, s in paid):.2f} s; most: {most}")
    print(f"medians of {args.repeat} x {args.parallel} fresh processes per workload")
    print(median_table({workload: [run for runs in done for run in runs] for workload, done in runs.items()}))
    if args.out:
        write_csv(args.out, args.label, runs)


def median_table(runs: dict[str, list[dict]]) -> str:
    """A Markdown table: one row per phase (in the order they ran), median wall and CPU per workload."""
    from harness import markdown_table

    columns = ["phase", *(f"{workload} {kind} s" for workload in runs for kind in ("wall", "CPU"))]
    rows = []
    for phase in dict.fromkeys(phase for done in runs.values() for run in done for phase in run):
        row = {"phase": phase}
        for workload, done in runs.items():
            values = [run[phase] for run in done if phase in run]
            if values:
                row[f"{workload} wall s"] = round(statistics.median(v[0] for v in values), 2)
                if phase != RSS:
                    row[f"{workload} CPU s"] = round(statistics.median(v[1] for v in values), 2)
        rows.append(row)
    return markdown_table(rows, columns)


def write_csv(path: Path, label: str, runs: dict[str, list[list[dict]]]) -> None:
    """Append a row per workload, run, child and phase: label, workload, run, child, phase, wall_s, cpu_s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["label", "workload", "run", "child", "phase", "wall_s", "cpu_s"])
        for workload, done in runs.items():
            for run, children in enumerate(done):
                for index, phases in enumerate(children):
                    for phase, (wall, cpu) in phases.items():
                        writer.writerow([label, workload, run, index, phase, round(wall, 3), round(cpu, 3)])


if __name__ == "__main__":
    main()
