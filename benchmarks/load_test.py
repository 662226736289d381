"""Load test of the deployment engine: N SuperNodes against one SuperLink on loopback.

Runs ``run.sh`` twice with the same tiny real-data workload (a subset
folder of ``--per-class`` images per class and split, see ``subset.py``),
insecure and ``--secure`` (TLS + SuperNode authentication), and prints the
round latency of each (seconds between central evaluations), their means,
the secure / insecure ratio (the TLS overhead) and peak memory, as a
BENCHMARKS.md table. The runs go to ``--output-dir`` (default: a new folder
under ``benchmarks/runs/``); ``--keep NAME`` copies each run's small result
files to ``benchmarks/results/NAME/<mode>/``.

    python3 benchmarks/load_test.py --data-dir ../shared/data/brain-tumor-mri --sites 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics

from harness import (
    add_keep,
    add_output_dir,
    fresh_output_dir,
    keep_result,
    markdown_table,
    measured_run,
    shown_command,
)
from subset import make_subset

WORKLOAD = "image-size=32 batch-size=16 local-epochs=1 fraction-evaluate=0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--per-class", type=int, default=20, help="images per class and split")
    add_output_dir(parser, None)
    add_keep(parser, where="NAME/<mode>/")
    args = parser.parse_args()
    args.output_dir = (args.output_dir or fresh_output_dir("load")).resolve()
    data_dir = str(make_subset(args.data_dir, args.output_dir / "data", args.per_class))
    subset = shown_command(
        ["python3", "benchmarks/subset.py", args.data_dir, data_dir, "--per-class", f"{args.per_class}"]
    )
    rows = []
    for mode, extra in (("insecure", []), ("secure (TLS + node auth)", ["--secure"])):
        output_dir = args.output_dir / mode.split()[0]
        command = ["--sites", str(args.sites), "--rounds", str(args.rounds), "--data-dir", data_dir]
        command += ["--port", str(args.port), "--min-sites", str(args.sites)]
        command += ["--run-config", WORKLOAD, *extra]
        figures = measured_run(command, output_dir)
        if args.keep:
            shown = f"{subset} && {figures['command']}"  # the data subset, then the run
            keep_result(output_dir, f"{args.keep}/{output_dir.name}", shown, measurement=figures)
        latencies = figures["round_latency_s"]
        rows.append(
            {
                "mode": mode,
                "sites": args.sites,
                "round latency s (each)": ", ".join(str(x) for x in latencies),
                "mean round s": round(statistics.mean(latencies), 1),
                "command s": figures["command_s"],
                "peak RAM GiB (all)": figures["peak_total_gib"],
            }
        )
        print(json.dumps({"mode": mode, **figures}), flush=True)
    ratio = rows[1]["mean round s"] / rows[0]["mean round s"]
    print(markdown_table(rows, list(rows[0])))
    print(f"TLS overhead: secure / insecure mean round time = {ratio:.2f}")


if __name__ == "__main__":
    main()
