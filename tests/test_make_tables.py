"""benchmarks/make_tables.py: the numbers it computes from result folders, and that the docs are current."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from make_tables import ROOT, main, regenerate, render
from result_folders import CI_MACHINE, load_runs

FED = {  # the settings of a federated run, as run_config.json holds them
    "num-partitions": 4, "partitioning": "iid", "dirichlet-alpha": 1.0, "balanced-softmax": False,
    "strategy": "fedavg", "norm": "batch", "dp": "none", "secagg": False, "model": "cnn", "image-size": 64,
    "num-server-rounds": 4, "local-epochs": 4, "data-dir": "/data/brain-tumor-mri", "dp-delta": 1e-5,
}  # fmt: skip


def keep(
    root: Path, name: str, accuracy: list[float], elapsed: list[float], command: str = "", **config: object
) -> Path:
    """A result folder as ``harness.keep_result`` leaves it: rounds 0..n, site metrics, settings, command."""
    folder = root / "benchmarks" / "results" / name
    folder.mkdir(parents=True)
    rounds = range(len(accuracy))
    pd.DataFrame({
        "round": rounds, "loss": 0.5, "accuracy": accuracy, "f1_macro": [a - 0.01 for a in accuracy],
        "recall_glioma": accuracy, "leak_free_accuracy": [a - 0.005 for a in accuracy],
        "sites_trained": 4, "elapsed_s": elapsed,
    }).to_csv(folder / "federated_learning_results.csv", index=False)  # fmt: skip
    pd.DataFrame({"round": [1, 1, 2, 2], "site": [0, 1, 0, 1], "num_train": [100, 120, 100, 120]}).to_csv(
        folder / "site_metrics.csv", index=False
    )
    settings = {**FED, "num-server-rounds": len(accuracy) - 1, **config}
    (folder / "run_config.json").write_text(json.dumps(settings))
    (folder / "command.txt").write_text((command or f"./run.sh --simulation --output-dir runs/{name}") + "\n")
    return folder


def docs(root: Path, *tables: str) -> None:
    """README.md and BENCHMARKS.md with empty marked tables."""
    marked = "".join(f"## {name}\n<!-- table:{name} -->\n<!-- /table -->\n" for name in tables)
    (root / "README.md").write_text("# readme\n<!-- table:summary -->\n<!-- /table -->\n")
    (root / "BENCHMARKS.md").write_text(f"# benchmarks\n{marked}")


def test_time_to_a_threshold_is_the_first_round_at_or_above_it(tmp_path):
    keep(tmp_path, "iid", [0.25, 0.96, 0.97, 0.965, 0.985, 0.98], [1.0, 30.0, 60.0, 90.0, 120.0, 150.0])
    (run,) = load_runs(tmp_path / "benchmarks" / "results")
    assert run.hits == {95: (1, 30.0), 97: (2, 60.0), 98: (4, 120.0)}  # not round 3, which dips below
    assert run.cells["97% reached"] == "round 2, 60 s"
    assert run.cells["98% reached"] == "round 4, 2.0 min"


def test_per_run_figures_final_best_passes_and_wall_time(tmp_path):
    keep(tmp_path, "iid", [0.25, 0.90, 0.94, 0.93], [0.5, 100.5, 200.5, 300.5], **{"local-epochs": 4})
    keep(tmp_path, "central", [0.25, 0.99], [0.2, 7.0], **{"centralized": True, "local-epochs": 1})
    central, fed = load_runs(tmp_path / "benchmarks" / "results")
    assert (fed.passes, fed.final, fed.wall, fed.round_s) == (12, 0.93, 300.5, 100.0)
    assert fed.cells["best (round)"] == "0.9400 (2)"
    assert fed.cells["leak-free accuracy"] == "0.9250"
    assert fed.cells["rounds x local epochs"] == "3 x 4"
    assert fed.cells["95% reached"] == "not reached"
    assert fed.cells["training images per site"] == "110"
    assert (central.central, central.passes, central.cells["setting"]) == (True, 1, "centralized")
    assert central.cells["95% reached"] == "epoch 1, 7 s"


def test_federated_vs_centralized_passes_and_time_to_the_central_final_accuracy(tmp_path):
    # centralized: 4 epochs, final 0.96 first reached at epoch 3 (30 s); 98% never
    keep(
        tmp_path,
        "central",
        [0.2, 0.90, 0.95, 0.96, 0.96],
        [0, 10, 20, 30, 40],
        **{"centralized": True, "local-epochs": 1},
    )
    # federated: 2 local epochs a round; 0.96 first at round 3 (6 passes, 90 s)
    keep(tmp_path, "fed", [0.2, 0.80, 0.94, 0.961, 0.97], [0, 30, 60, 90, 120], **{"local-epochs": 2})
    table = render("centralized", tmp_path / "benchmarks" / "results")
    row = table.splitlines()[2].split(" | ")
    assert row[:2] == ["| fed", "central"]
    assert row[2:5] == ["8 / 4", "0.9700 / 0.9600", "0.9400"]  # fed accuracy after 4 passes: round 2
    assert row[5] == "6 / 3, 2.00"  # passes to 0.96
    assert row[6] == "90 s / 30 s, 3.00"  # time to 0.96
    assert row[7] == "not reached / not reached, -"
    assert row[8] == "\u2014 |"  # no deployment clock in these results: a dash, no number
    assert f"# fed\n# machine: {CI_MACHINE}\n./run.sh --simulation --output-dir runs/fed\n" in table
    assert "Machine:" not in table  # each folder's machine sits with its command


def test_time_to_the_central_final_on_the_deployment_clock_where_the_results_hold_it(tmp_path):
    keep(tmp_path, "central", [0.2, 0.96], [0, 30], **{"centralized": True, "local-epochs": 1})
    fed = keep(tmp_path, "fed", [0.2, 0.80, 0.961], [0, 30, 90], **{"local-epochs": 1})
    results = fed / "federated_learning_results.csv"
    pd.read_csv(results).assign(parallel_elapsed_s=[0, 10, 24]).to_csv(results, index=False)
    row = render("centralized", tmp_path / "benchmarks" / "results").splitlines()[2].split(" | ")
    assert row[6] == "90 s / 30 s, 3.00"  # this machine: sites one after another
    assert row[8] == "24 s / 30 s, 0.80 |"  # the sites in parallel


def test_a_federated_run_is_set_against_the_centralized_runs_framed_as_it_is(tmp_path):
    keep(tmp_path, "central", [0.2, 0.96], [0, 30], **{"centralized": True, "local-epochs": 1})  # no crop
    keep(tmp_path, "central-otsu", [0.2, 0.97], [0, 30], centralized=True, crop="head-otsu")
    keep(tmp_path, "fed", [0.2, 0.961], [0, 90])  # kept before the crop setting: the head rule
    keep(tmp_path, "fed-head", [0.2, 0.961], [0, 90], crop="head")
    keep(tmp_path, "fed-otsu", [0.2, 0.98], [0, 90], crop="head-otsu")
    table = render("centralized", tmp_path / "benchmarks" / "results")
    pairs = [tuple(line.split(" | ")[:2]) for line in table.splitlines()[2:] if line.startswith("| fed")]
    assert pairs == [("| fed", "central"), ("| fed-head", "central"), ("| fed-otsu", "central-otsu")]


def test_label_skew_gap_is_dirichlet_minus_iid_in_points_on_the_same_schedule(tmp_path):
    keep(tmp_path, "iid", [0.2, 0.9, 0.983], [0, 10, 20])
    skew = {"partitioning": "dirichlet", "dirichlet-alpha": 0.3}
    keep(tmp_path, "dir", [0.2, 0.9, 0.975], [0, 10, 30], **skew)
    keep(tmp_path, "dir-short", [0.2, 0.9], [0, 10], partitioning="dirichlet")  # no IID run of 1 round
    table = render("label-skew", tmp_path / "benchmarks" / "results")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| dir")]
    assert rows[0][:2] == ["| dir", "4 sites, Dirichlet 0.3"]
    assert rows[0][-4:] == ["iid", "-0.80", "-0.80", "1.50 |"]
    assert rows[1][0] == "| dir-short" and rows[1][-4] == "none kept beside it"


def test_privacy_and_robustness_pick_their_runs_and_their_clean_baselines(tmp_path):
    keep(tmp_path, "suite/clean", [0.2, 0.77], [0, 40], norm="group")
    keep(tmp_path, "suite/dp", [0.2, 0.23], [0, 42], norm="group", dp="server-fixed")
    keep(tmp_path, "suite/median", [0.2, 0.75], [0, 50], strategy="median",
         command="python3 benchmarks/poisoning.py --poison sign-flip --poisoned-sites 0")  # fmt: skip
    keep(tmp_path, "suite/fedavg", [0.2, 0.76], [0, 50])
    results = tmp_path / "benchmarks" / "results"
    privacy = render("privacy", results)
    assert "| suite/dp | 4 sites, IID, group norm, DP server-fixed" in privacy
    assert privacy.splitlines()[2].endswith("| suite/clean | -54.00 | -54.00 | 1.05 |")
    robustness = render("robustness", results)
    assert "median, poisoned (sign-flip)" in robustness
    assert robustness.splitlines()[2].endswith("| suite/fedavg | -1.00 | -1.00 | 1.00 |")


def test_a_question_without_results_says_so_with_a_command(tmp_path):
    keep(tmp_path, "iid", [0.2, 0.9], [0, 10])
    text = render("deployment", tmp_path / "benchmarks" / "results")
    assert text.startswith("No result folder in `benchmarks/results/` answers this yet")
    assert "python3 benchmarks/load_test.py" in text


def evaluation(root: Path, name: str, metrics: list[tuple], machine: str = "", **info: object) -> Path:
    """A ``brainfl evaluate`` folder: evaluation.csv (metric,class,value,low,high), its JSON and command."""
    folder = root / "benchmarks" / "results" / name
    folder.mkdir(parents=True)
    table = pd.DataFrame(metrics, columns=["metric", "class", "value", "low", "high"])
    table.to_csv(folder / "evaluation.csv", index=False)
    if info:
        (folder / "evaluation.json").write_text(json.dumps(info))
    (folder / "command.txt").write_text(
        f"brainfl evaluate --model final_model.keras data --output-dir {name}\n"
    )
    if machine:
        (folder / "machine.txt").write_text(machine + "\n")
    return folder


def test_external_validation_shows_each_metric_with_its_interval_one_column_per_folder(tmp_path):
    overall = [
        ("accuracy", None, 0.98169, 0.97483, 0.98856), ("balanced_accuracy", None, 0.98, 0.972, 0.9876),
        ("f1_macro", None, 0.9807, 0.973, 0.988), ("ece", None, 0.0756, 0.0716, 0.0827),
    ]  # fmt: skip
    per_class = [
        ("sensitivity", "glioma", 0.9667, 0.9464, 0.9855), ("sensitivity", "notumor", 1.0, 1.0, 1.0),
        ("specificity", "glioma", 0.999, 0.997, 1.0), ("roc_auc", "glioma", 0.9989, 0.9965, 1.0),
    ]  # fmt: skip
    reliability = [
        {"count": 0, "confidence": None},
        {"count": 1, "confidence": 0.5},
        {"count": 3, "confidence": 0.9},
    ]
    evaluation(tmp_path, "eval/official", overall + per_class, "1 GPU", images=1311, reliability=reliability)
    evaluation(tmp_path, "eval/leak-free", [("accuracy", None, 0.97722, 0.96763, 0.98681),
                                            ("sensitivity", "glioma", 0.9, None, None),
                                            ("sensitivity", "meningioma", None, None, None)])  # fmt: skip
    table = render("external-validation", tmp_path / "benchmarks" / "results")
    rows = {
        line.split(" | ")[0]: line.split(" | ")[1:] for line in table.splitlines() if line.startswith("| ")
    }
    assert rows["| metric"] == ["eval/leak-free", "eval/official |"]
    assert rows["| images"] == ["", "1311 |"]  # no evaluation.json: no image count
    assert rows["| accuracy"] == ["0.977 [0.968, 0.987]", "0.982 [0.975, 0.989] |"]
    assert rows["| ECE (top label)"] == ["", "0.076 [0.072, 0.083] |"]
    assert rows["| mean top-label confidence"] == ["", "0.800 |"]  # (1 x 0.5 + 3 x 0.9) / 4 images
    assert rows["| sensitivity, glioma"] == ["0.900", "0.967 [0.946, 0.986] |"]  # no bounds: the value alone
    assert rows["| sensitivity, meningioma"] == ["n/a", " |"]  # a class one folder lacks
    assert "specificity" not in table and "roc_auc" not in table
    order = list(rows)[1:]  # below the header
    assert order[:6] == ["| images", "| accuracy", "| balanced accuracy", "| macro F1", "| ECE (top label)",
                         "| mean top-label confidence"]  # fmt: skip
    official = "brainfl evaluate --model final_model.keras data --output-dir eval/official"
    assert f"# eval/official\n# machine: 1 GPU\n{official}\n" in table
    assert f"# eval/leak-free\n# machine: {CI_MACHINE}\n" in table  # no machine.txt: the CI machine


def test_preparation_families_evaluations_stay_out_of_the_external_validation_table(tmp_path):
    accuracy = [("accuracy", None, 0.9, 0.88, 0.92)]
    evaluation(tmp_path, "eval/official", accuracy)
    for model, csv in (("families/model", "families.csv"), ("families/left-out", "families_left_out.csv")):
        (evaluation(tmp_path, f"{model}/histeq", accuracy).parent / csv).write_text("family,accuracy\n")
    evaluation(tmp_path, "other/histeq", accuracy)  # no families table beside it: an external evaluation
    table = render("external-validation", tmp_path / "benchmarks" / "results")
    assert table.splitlines()[0] == "| metric | eval/official | other/histeq |"
    assert "families/" not in table


def test_decode_time_has_a_row_per_format_and_its_time_over_jpeg(tmp_path):
    folder = tmp_path / "benchmarks" / "results" / "decode-speed"
    folder.mkdir(parents=True)
    pd.DataFrame({
        "format": ["jpeg", "png16", "dicom"], "images": 200, "image_size": 64, "channels": 1,
        "mean_file_kib": [7.3, 36.6, 98.8], "ms_per_image": [0.358, 2.922, 1.188],
        "images_per_s": [2796.5, 342.2, 841.8],
    }).to_csv(folder / "decode_speed.csv", index=False)  # fmt: skip
    (folder / "command.txt").write_text("python3 benchmarks/decode_speed.py --n 200 --keep decode-speed\n")
    (folder / "machine.txt").write_text("2 CPU cores (x86_64), no GPU\n")
    table = render("decode-time", tmp_path / "benchmarks" / "results")
    lines = table.splitlines()
    header = "| run | format | images | image px | channels | mean file | ms per image | images per s "
    assert lines[0] == header + "| time / JPEG time |"
    assert lines[2] == "| decode-speed | jpeg | 200 | 64 | 1 | 7.3 KiB | 0.36 | 2796 | 1.00 |"
    assert lines[3] == "| decode-speed | png16 | 200 | 64 | 1 | 36.6 KiB | 2.92 | 342 | 8.16 |"
    assert lines[4] == "| decode-speed | dicom | 200 | 64 | 1 | 98.8 KiB | 1.19 | 842 | 3.32 |"
    command = "python3 benchmarks/decode_speed.py --n 200 --keep decode-speed"
    assert table.endswith(f"# decode-speed\n# machine: 2 CPU cores (x86_64), no GPU\n{command}\n```\n")


def test_throughput_has_a_row_per_step_with_the_apps_share_of_the_tight_loop(tmp_path):
    folder = tmp_path / "benchmarks" / "results" / "throughput"
    folder.mkdir(parents=True)
    pd.DataFrame({
        "step": ["training", "evaluation"], "images": 5708, "batch_size": [32, 128],
        "app_images_per_s": [600.7, 3742.4], "tight_images_per_s": [634.0, 3767.6],
        "app_share": [0.948, 0.993],
    }).to_csv(folder / "throughput.csv", index=False)  # fmt: skip
    (folder / "command.txt").write_text("python3 benchmarks/throughput.py --keep throughput\n")
    lines = render("throughput", tmp_path / "benchmarks" / "results").splitlines()
    header = "| run | step | images | batch size | app, images per s | tight loop, images per s "
    assert lines[0] == header + "| app / tight loop |"
    assert lines[2] == "| throughput | training | 5708 | 32 | 601 | 634 | 0.95 |"
    assert lines[3] == "| throughput | evaluation | 5708 | 128 | 3742 | 3768 | 0.99 |"
    assert "python3 benchmarks/throughput.py --keep throughput" in lines


def test_model_cost_has_a_row_per_candidate_with_its_cost_over_the_first(tmp_path):
    folder = tmp_path / "benchmarks" / "results" / "model-cost"
    folder.mkdir(parents=True)
    pd.DataFrame({
        "candidate": ["image-size=64", "model='rescnn'"], "model": ["cnn", "rescnn"], "image_size": 64,
        "parameters": [394836, 691700], "images": 1024, "ms_per_image": [2.5, 3.1],
        "relative_cost": [1.0, 1.24],
    }).to_csv(folder / "model_cost.csv", index=False)  # fmt: skip
    (folder / "command.txt").write_text("python3 benchmarks/model_cost.py --keep model-cost\n")
    lines = render("model-cost", tmp_path / "benchmarks" / "results").splitlines()
    assert lines[0] == "| run | model | image px | parameters | training ms per image | cost / first |"
    assert lines[3] == "| model-cost | rescnn | 64 | 691,700 | 3.10 | 1.24 |"
    assert "python3 benchmarks/model_cost.py --keep model-cost" in lines


def test_tables_without_their_folders_say_so_with_a_command(tmp_path):
    keep(tmp_path, "iid", [0.2, 0.9], [0, 10])  # a run is no evaluation and no timing
    results = tmp_path / "benchmarks" / "results"
    assert "brainfl evaluate" in render("external-validation", results)
    assert "python3 benchmarks/decode_speed.py" in render("decode-time", results)
    assert render("decode-time", tmp_path / "absent").startswith("No result folder")


def test_check_detects_stale_docs_and_a_rewrite_makes_them_current(tmp_path, capsys):
    docs(
        tmp_path,
        "runs",
        "centralized",
        "label-skew",
        "scale",
        "deployment",
        "privacy",
        "robustness",
        "shifted",
        "external-validation",
        "decode-time",
    )
    assert main(["--root", str(tmp_path)]) == 0  # no results yet: every table says so
    assert main(["--root", str(tmp_path), "--check"]) == 0
    keep(tmp_path, "iid", [0.2, 0.9, 0.97], [0, 10, 20], **{"local-epochs": 20})
    keep(tmp_path, "timing", [0.2, 0.5], [0, 10])  # 4 passes: a timing run, not in the summary
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert "stale: README.md, BENCHMARKS.md" in capsys.readouterr().out
    assert "No result folder" in (tmp_path / "README.md").read_text()  # --check writes nothing
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    readme, benchmarks = ((tmp_path / name).read_text() for name in ("README.md", "BENCHMARKS.md"))
    assert "| iid | 4 sites, IID | 40 | 0.9700 | 0.9650 | - | - | round 2, 20 s | 20 s |" in readme
    assert "| timing |" not in readme and "| timing |" in benchmarks
    assert readme.endswith("<!-- /table -->\n")
    # each folder's machine in BENCHMARKS.md, beside its command; README.md points there
    assert f"# iid\n# machine: {CI_MACHINE}\n./run.sh" in benchmarks
    assert "# machine:" not in readme and "[BENCHMARKS.md](BENCHMARKS.md#every-kept-run)" in readme


def test_an_unknown_table_name_stops_with_the_known_names(tmp_path):
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        regenerate("<!-- table:nope -->\n<!-- /table -->\n", tmp_path)


def test_committed_docs_are_current_with_the_committed_results():
    results = ROOT / "benchmarks" / "results"
    if not results.is_dir() or not any(p.is_dir() for p in results.iterdir()):
        pytest.skip("no result folder committed under benchmarks/results/")
    assert main(["--check"]) == 0, "README.md or BENCHMARKS.md is stale: python3 benchmarks/make_tables.py"


def test_engine_table_sets_deployment_against_simulation_on_warm_rounds(tmp_path):
    # warm rounds (after the first): deployment 60 s, simulation 40 s
    keep(tmp_path, "e4-deployment", [0.2, 0.5, 0.6, 0.7], [0, 100, 160, 220], "./run.sh --sites 4")
    keep(tmp_path, "e4-simulation", [0.2, 0.5, 0.6, 0.7], [0, 90, 130, 170], "./run.sh --simulation")
    sites = tmp_path / "benchmarks" / "results" / "e4-deployment" / "site_metrics.csv"
    table = pd.read_csv(sites).assign(startup_s=[9.0, 9.0, 13.0, 11.0], training_s=[20.0, 22.0, 24.0, 26.0])
    table.to_csv(sites, index=False)
    rows = [line.split(" | ") for line in render("engines", tmp_path / "benchmarks" / "results").splitlines()]
    deployment = next(row for row in rows if row[0] == "| e4-deployment")
    assert deployment[4:6] == ["60.0 s", "12.0 s"]  # warm round; start-up median of round 2's sites
    assert deployment[-3:] == ["25.0 s", "1.50", "- |"]  # training median, warm round / simulation's, memory
    simulation = next(row for row in rows if row[0] == "| e4-simulation")
    assert simulation[4] == "40.0 s" and simulation[5] == "n/a"


def test_peak_memory_kept_in_measurement_json_shows_in_the_scale_and_engine_tables(tmp_path):
    ten = {"num-partitions": 10}
    measured = keep(tmp_path, "scale/10", [0.2, 0.5], [0, 60], "./run.sh --sites 10", **ten)
    (measured / "measurement.json").write_text(json.dumps({"peak_total_gib": 7.456, "peak_site_gib": 0.9}))
    keep(tmp_path, "scale/10-unmeasured", [0.2, 0.5], [0, 60], "./run.sh --sites 10", **ten)
    keep(tmp_path, "e4-deployment", [0.2, 0.5, 0.6], [0, 100, 160], "./run.sh --sites 4")
    folder = tmp_path / "benchmarks" / "results" / "e4-deployment"
    (folder / "measurement.json").write_text(json.dumps({"peak_total_gib": 3.2}))
    results = tmp_path / "benchmarks" / "results"
    lines = render("scale", results).splitlines()
    assert lines[0].endswith("| wall time | peak memory, all processes |")
    assert lines[2].startswith("| scale/10 |") and lines[2].endswith("| 60 s | 7.46 GiB |")
    assert lines[3].startswith("| scale/10-unmeasured |") and lines[3].endswith("| 60 s | - |")
    assert "| e4-deployment |" not in "\n".join(lines)  # 4 sites: not a scale run
    engines = render("engines", results).splitlines()
    assert engines[0].endswith("| round / simulation round | peak memory, all processes |")
    assert engines[2].startswith("| e4-deployment |") and engines[2].endswith("|  | 3.20 GiB |")


def shifted(run_folder: Path, sub: str, accuracy: tuple, sensitivity: dict[str, tuple] | None = None) -> None:
    """What ``shifted_copy.py score --keep RUN`` keeps in a run's folder: CSV, command, copy.txt."""
    folder = run_folder / sub
    folder.mkdir()
    metrics = [("accuracy", None, *accuracy), ("f1_macro", None, 0.5, 0.4, 0.6)]
    metrics += [("sensitivity", name, *values) for name, values in (sensitivity or {}).items()]
    metrics += [("specificity", "glioma", 0.99, 0.98, 1.0)]
    pd.DataFrame(metrics, columns=["metric", "class", "value", "low", "high"]).to_csv(
        folder / "evaluation.csv", index=False
    )
    score = f"python3 benchmarks/shifted_copy.py score --copy runs/copy --keep {run_folder.name}"
    (folder / "command.txt").write_text(score + "\n")  # one command scores and keeps both
    make = "python3 benchmarks/shifted_copy.py make --output-dir runs/copy"
    (folder / "copy.txt").write_text(f"command: {make}\nseed: 0\ndata: /data/brain-tumor-mri\n")


def test_shifted_copy_accuracy_shows_in_the_runs_table_and_its_own_table_not_in_external_validation(
    tmp_path,
):
    both = keep(tmp_path, "iid", [0.2, 0.9, 0.98], [0, 10, 20])
    shifted(
        both, "shifted", (0.71234, 0.69, 0.735), {"glioma": (0.6, 0.55, 0.65), "notumor": (0.9, 0.85, 0.95)}
    )
    shifted(both, "shifted-leak-free", (0.70111, 0.68, 0.72))
    only_one = keep(tmp_path, "dir", [0.2, 0.9, 0.97], [0, 10, 20], partitioning="dirichlet")
    shifted(only_one, "shifted-leak-free", (0.65, 0.6, 0.7))
    keep(tmp_path, "plain", [0.2, 0.9, 0.96], [0, 10, 20])
    evaluation(tmp_path, "evaluate-iid/official", [("accuracy", None, 0.98, 0.97, 0.99)])
    results = tmp_path / "benchmarks" / "results"
    runs = {line.split(" | ")[0]: line.split(" | ") for line in render("runs", results).splitlines()}
    header = runs["| run"]
    at = header.index("leak-free accuracy")
    assert header[at + 1 : at + 3] == ["shifted accuracy", "shifted leak-free accuracy"]
    assert runs["| iid"][at : at + 3] == ["0.9750", "0.7123", "0.7011"]
    assert runs["| dir"][at + 1 : at + 3] == ["-", "0.6500"]
    assert runs["| plain"][at + 1 : at + 3] == ["-", "-"]
    table = render("shifted", results)
    lines = table.splitlines()
    assert lines[0] == (
        "| run | setting | official accuracy | leak-free accuracy | shifted accuracy [95% interval] "
        "| shifted leak-free accuracy [95% interval] | shifted sensitivity, glioma "
        "| shifted sensitivity, notumor |"
    )
    assert lines[2] == "| dir | 4 sites, Dirichlet 1.0 | 0.9700 | 0.9650 | - | 0.650 [0.600, 0.700] | - | - |"
    assert lines[3] == (
        "| iid | 4 sites, IID | 0.9800 | 0.9750 | 0.712 [0.690, 0.735] | 0.701 [0.680, 0.720] "
        "| 0.600 [0.550, 0.650] | 0.900 [0.850, 0.950] |"
    )
    assert "| plain |" not in table  # no shifted copy scored
    make = "python3 benchmarks/shifted_copy.py make --output-dir runs/copy"
    score, ci = "score --copy runs/copy --keep", f"# machine: {CI_MACHINE}"
    assert f"# iid\n{ci}\n./run.sh --simulation --output-dir runs/iid\n# iid/shifted\n{ci}\n{make}\n" in table
    assert f"{score} iid\n# dir/shifted-leak-free\n" not in table  # runs sorted: dir first
    assert f"# dir/shifted-leak-free\n{ci}\n{make}\npython3 benchmarks/shifted_copy.py {score} dir\n" in table
    assert "# iid/shifted-leak-free" not in table  # the same command as iid/shifted: listed once
    external = render("external-validation", results)
    assert external.splitlines()[0] == "| metric | evaluate-iid/official |"  # not iid/shifted
    assert "shifted_copy.py" not in external


def test_the_shifted_table_without_a_shifted_copy_says_so_with_a_command(tmp_path):
    keep(tmp_path, "iid", [0.2, 0.9], [0, 10])
    text = render("shifted", tmp_path / "benchmarks" / "results")
    assert text.startswith("No result folder in `benchmarks/results/` answers this yet")
    assert "python3 benchmarks/shifted_copy.py" in text


def test_a_run_with_synthetic_scanner_shift_says_so_in_its_setting(tmp_path):
    keep(tmp_path, "shifted-sites", [0.2, 0.9], [0, 10], **{"feature-shift": 0.5})
    keep(tmp_path, "plain-sites", [0.2, 0.9], [0, 10])
    table = render("runs", tmp_path / "benchmarks" / "results")
    shifted = next(line for line in table.splitlines() if line.startswith("| shifted-sites |"))
    plain = next(line for line in table.splitlines() if line.startswith("| plain-sites |"))
    assert "synthetic scanner shift 0.5" in shifted and "synthetic" not in plain


def test_a_run_with_pooled_statistics_names_its_strategy_and_the_pooling(tmp_path):
    keep(tmp_path, "pooled-bn", [0.2, 0.9], [0, 10], strategy="fedavgm", **{"bn-statistics": "pooled"})
    keep(tmp_path, "averaged-bn", [0.2, 0.9], [0, 10], strategy="fedavgm")
    table = render("runs", tmp_path / "benchmarks" / "results")
    pooled = next(line for line in table.splitlines() if line.startswith("| pooled-bn |"))
    averaged = next(line for line in table.splitlines() if line.startswith("| averaged-bn |"))
    assert "| 4 sites, IID, fedavgm, pooled BN |" in pooled and "pooled BN" not in averaged


def test_calibration_table_shows_the_temperature_and_ece_before_and_after(tmp_path):
    folder = keep(tmp_path, "calibrated", [0.2, 0.9], [0, 10])
    keep(tmp_path, "uncalibrated", [0.2, 0.9], [0, 10])
    test = {"images": 10, "before": {"ece": 0.0761, "nll": 0.1358, "accuracy": 0.9}}
    test["after"] = {"ece": 0.009, "nll": 0.075, "accuracy": 0.9}
    fitted = {"temperature": 0.576, "examples": 572, "test": test}
    (folder / "calibration.json").write_text(json.dumps(fitted))
    table = render("calibration", tmp_path / "benchmarks" / "results")
    row = "| calibrated | 4 sites, IID | 572 | 0.576 | 0.0761 / 0.0090 | 0.1358 / 0.0750 | 0.9000 / 0.9000 |"
    assert row in table
    assert "| uncalibrated |" not in table


def test_left_out_families_name_the_transform_each_model_never_saw_and_end_with_the_test_set(tmp_path):
    folder = tmp_path / "benchmarks" / "results" / "left-out"
    folder.mkdir(parents=True)
    nan = float("nan")
    pd.DataFrame({
        "family": ["histeq", "jpeg", "mean", "worst (histeq)", "testing"],
        "images": [1311, 1311, 1311, 1311, nan], "accuracy": [0.7, 0.96, 0.83, 0.7, 0.97],
        "accuracy_low": [0.68, 0.95, nan, 0.68, nan], "accuracy_high": [0.72, 0.97, nan, 0.72, nan],
        "balanced_accuracy": [0.69, 0.95, 0.82, 0.69, 0.968],
        "balanced_accuracy_low": [0.67, 0.94, nan, 0.67, nan],
        "balanced_accuracy_high": [0.71, 0.96, nan, 0.71, nan], "ece": [0.1, 0.02, 0.06, 0.1, 0.03],
        "missed_tumor_rate": [0.3, 0.01, 0.155, 0.3, nan],
        "trained_without": ["curve", nan, nan, "curve", nan],
        "leak_free_accuracy": [nan, nan, nan, nan, 0.965],
    }).to_csv(folder / "families_left_out.csv", index=False)  # fmt: skip
    (folder / "command.txt").write_text("python3 benchmarks/preparation_families.py leave-out\n")
    lines = render("preparation-families-left-out", tmp_path / "benchmarks" / "results").splitlines()
    assert lines[0].startswith("| run | family | trained without | images | accuracy |")
    assert lines[2].startswith("| left-out | histeq | curve | 1311 | 0.700 [0.680, 0.720] |")
    assert lines[3].startswith("| left-out | jpeg | — | 1311 | 0.960 [0.950, 0.970] |")
    assert "| left-out | Testing (in distribution) | — | — | 0.9700 (leak-free 0.9650) |" in lines[6]


def test_families_summary_has_one_row_per_model_with_its_mean_worst_and_test_set(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    nan = float("nan")
    for name, histeq in (("image", 0.70), ("equalize", 0.93)):
        folder = results / "families" / name
        folder.mkdir(parents=True)
        pd.DataFrame({
            "family": ["histeq", "jpeg", "mean", "worst (histeq)", "testing"],
            "images": [1311, 1311, 1311, 1311, nan], "accuracy": [histeq, 0.96, nan, histeq, 0.97],
            "accuracy_low": [nan] * 5, "accuracy_high": [nan] * 5, "balanced_accuracy": [0.6] * 5,
            "balanced_accuracy_low": [nan] * 5, "balanced_accuracy_high": [nan] * 5, "ece": [0.1] * 5,
            "missed_tumor_rate": [0.3, 0.01, 0.155, 0.3, nan], "leak_free_accuracy": [nan] * 4 + [0.965],
        }).to_csv(folder / "families.csv", index=False)  # fmt: skip
        (folder / "command.txt").write_text("python3 benchmarks/preparation_families.py score\n")
    lines = render("preparation-families-summary", results).splitlines()
    assert lines[0].startswith("| run | Testing (leak-free) | families mean | worst family |")
    assert "| families/equalize | 0.9700 (0.9650) | 0.945 | 0.930 (histeq) | 0.155 | 0.300 |" in lines
    assert "| families/image | 0.9700 (0.9650) | 0.830 | 0.700 (histeq) | 0.155 | 0.300 |" in lines
