"""Tests of the run report, made from a run folder written by hand (no training, no Flower).

The folder holds what the server saves: ``run_config.json`` (its data-dir
points nowhere), the per-round and per-site CSVs, ``partition.csv``,
``test_predictions.csv`` (the committed sample's test images, with made-up
probabilities, one row all NaN) and a tiny model for the Grad-CAM examples.
The report runs with the data pipeline made unimportable and data decoding
and evaluation refused, so everything it shows comes from those files.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainfl import cli
from brainfl.core.errors import BrainFLError
from brainfl.data import loading as data_loader
from brainfl.federation.audit import AuditLog
from brainfl.model import training
from brainfl.report import page as report
from brainfl.report.results import (
    AUDIT_JSONL,
    RESULTS_CSV,
    SITE_CSV,
    CsvAppender,
    results_header,
    site_header,
)
from brainfl.report.run import PARTITION_CSV, PREDICTIONS_CSV
from brainfl.settings.run_settings import default_run_config
from conftest import CLASSES
from test_predict import IMAGE_SIZE, SAMPLE, tiny_model_file

CHROMIUM = Path("/usr/bin/chromium")
PARTITION = pd.DataFrame(
    {
        "site": ["0", "1", "2"],
        "num_train": [30, 20, 25],
        "num_val": [4, 3, 2],
        "glioma": [10, 2, 13],
        "meningioma": [5, 8, 2],
        "notumor": [10, 5, 5],
        "pituitary": [5, 5, 5],
    }
)
ACCURACIES = (0.25, 0.75, 0.71875)  # the last is the predictions' accuracy, 23 of 32
# each site's held-out sensitivity per class (site 1's split has no pituitary scan), every round
SITE_SENSITIVITY = {0: (0.9, 0.5, 1.0, 0.75), 1: (0.6, 0.7, 0.8, float("nan")), 2: (0.1, 0.2, 0.3, 0.4)}
CHANGED = {"num-server-rounds": 2, "num-partitions": 3, "partitioning": "dirichlet", "learning-rate": 0.01}


def sample_test_images() -> list[tuple[Path, int, int]]:
    """(image, true class, j): the sample's 8 test images per class."""
    return [
        (path, label, j)
        for label, name in enumerate(CLASSES)
        for j, path in enumerate(sorted((SAMPLE / "Testing" / name).iterdir()))
    ]


def predicted_class(label: int, j: int) -> int:
    """What the made-up model predicts: right for j < 5 and j == 7, the next class for j = 5, 6;
    image 7 of class 0 has NaN probabilities (-1: no prediction)."""
    if j in (5, 6):
        return (label + 1) % len(CLASSES)
    return -1 if (label, j) == (0, 7) else label


def probabilities(label: int, j: int) -> list[float]:
    guess = predicted_class(label, j)
    if guess < 0:
        return [float("nan")] * len(CLASSES)
    top = 0.55 + 0.05 * j  # a later image is a more confident prediction
    return [top if k == guess else (1 - top) / 3 for k in range(len(CLASSES))]


def write_predictions(out: Path, files: list[tuple[Path, int, int]], leak_free: bool = True) -> None:
    rows = [
        {
            "file": str(path),
            "label": label,
            "leak_free": (int(j % 2 == 0) if leak_free else ""),
            **dict(zip(CLASSES, probabilities(label, j), strict=True)),
        }
        for path, label, j in files
    ]
    pd.DataFrame(rows).to_csv(out / PREDICTIONS_CSV, index=False)


def record_run(out: Path, model_file: Path | None, extra: dict | None = None) -> Path:
    """A run folder as the server writes it: 3 rows (rounds 0-2), 3 sites, site 2 missing round 2."""
    out.mkdir(parents=True)
    if model_file is not None:
        shutil.copy(model_file, out / "final_model.keras")
    config = {
        **default_run_config(),
        "image-size": IMAGE_SIZE,
        "data-dir": str(out / "no-such-data"),
        "output-dir": str(out),
        **CHANGED,
        "class-names": list(CLASSES),
        **(extra or {}),
    }
    (out / "run_config.json").write_text(json.dumps(config, indent=2))
    results = CsvAppender(out / RESULTS_CSV, results_header(CLASSES))
    sites = CsvAppender(out / SITE_CSV, site_header(CLASSES))
    for round_, accuracy in enumerate(ACCURACIES):
        row = {
            "round": round_,
            "loss": 1.5 - 0.2 * round_,
            "accuracy": accuracy,
            "f1_macro": round(accuracy - 0.05, 3),
        }
        row.update({f"recall_{name}": accuracy for name in CLASSES}, elapsed_s=[0.0, 60.0, 125.5][round_])
        row["parallel_elapsed_s"] = [0.0, 20.0, 41.0][round_]
        row["leak_free_accuracy"] = round(accuracy - 0.07, 3)
        row.update(
            balanced_accuracy=round(accuracy - 0.02, 3),
            balanced_accuracy_low=round(accuracy - 0.14, 3),
            balanced_accuracy_high=round(accuracy + 0.1, 3),
            accuracy_low=round(accuracy - 0.1, 3),
            accuracy_high=round(accuracy + 0.1, 3),
            ece=round(0.1 / (round_ + 1), 4),
        )
        for k, name in enumerate(CLASSES):
            row.update({f"specificity_{name}": 0.9 + 0.02 * k, f"roc_auc_{name}": 0.95 - 0.01 * k})
            row.update({f"sensitivity_{name}_low": 0.5, f"sensitivity_{name}_high": 0.875})
        if round_:
            row.update(train_loss=1.4, train_accuracy=0.5, val_loss=1.3, val_accuracy=0.45, sites_trained=3)
            for site in (0, 1, 2) if round_ == 1 else (0, 1):
                sites.append(
                    {
                        **PARTITION.iloc[site][["num_train", "num_val"]].astype(int).to_dict(),
                        "round": round_,
                        "site": site,
                        "train_loss": 1.4,
                        "train_accuracy": 0.5,
                        "val_loss": 1.3 - 0.1 * round_,
                        "val_accuracy": 0.3 + 0.1 * round_ + 0.01 * site,
                        "val_balanced_accuracy": 0.25 + 0.1 * round_ + 0.02 * site,
                        **{
                            f"val_sensitivity_{n}": v
                            for n, v in zip(CLASSES, SITE_SENSITIVITY[site], strict=True)
                        },
                    }
                )
        results.append(row)
    PARTITION.to_csv(out / PARTITION_CSV, index=False)
    write_predictions(out, sample_test_images())
    write_audit(out)
    return out


def write_audit(out: Path) -> None:
    """The rounds' lines of ``audit.jsonl``: three sites in round 1; in round 2 site 2 sent NaN."""
    audit = AuditLog(out)
    audit.append({"event": "round", "round": 0, "aggregated": [], "dropped": []})
    everyone = [{"node": 10 + site, "site": site} for site in (0, 1, 2)]
    audit.append({"event": "round", "round": 1, "aggregated": everyone, "dropped": []})
    dropped = [{**everyone[2], "reason": "unusable update: array 0 contains NaN or infinite values"}]
    audit.append({"event": "round", "round": 2, "aggregated": everyone[:2], "dropped": dropped})


@contextlib.contextmanager
def no_pipeline() -> Iterator[None]:
    """The data pipeline unimportable; decoding the data set and evaluating a model refused."""

    def refuse(*args, **kwargs):
        raise AssertionError("the report must not decode the data set nor evaluate a model")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("brainfl.data.sites", "brainfl.data.partitioning"):
            patch.setitem(sys.modules, name, None)  # `import` raises ImportError
        patch.setattr(data_loader, "load_dataset", refuse)
        patch.setattr(training, "predict_proba", refuse)
        yield


def make_report(run: Path) -> str:
    with no_pipeline():
        return report.make_report(run).read_text()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, model_file) -> Path:
    run = record_run(tmp_path_factory.mktemp("report") / "run", model_file, {"note": "<script>x</script>"})
    make_report(run)
    return run


@pytest.fixture(scope="module")
def page(recorded_run) -> str:
    return (recorded_run / report.REPORT_HTML).read_text()


class _Tables(HTMLParser):
    """Every <table> of a page as (its class, rows of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs).get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_table(page: str, cls: str) -> pd.DataFrame:
    """The page's table of class ``cls``, first row as header, numbers as numbers, first column as index."""
    parser = _Tables()
    parser.feed(page)
    rows = next(rows for found, rows in parser.tables if found == cls)
    frame = pd.DataFrame(rows[1:], columns=rows[0])
    for column in frame.columns[1:]:
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().all():
            frame[column] = converted
    return frame.set_index(frame.columns[0])


def image_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def headline(page: str) -> dict[str, str]:
    return dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page))


def test_writes_the_figures_as_png(recorded_run):
    for name, min_size in (
        (report.FIGURE_CURVES, (800, 300)),
        (report.FIGURE_CONFUSION, (800, 300)),
        (report.FIGURE_PARTITION, (400, 300)),
    ):
        with Image.open(recorded_run / name) as figure:
            assert figure.format == "PNG"
            assert figure.size[0] >= min_size[0] and figure.size[1] >= min_size[1]
            assert np.asarray(figure.convert("L")).std() > 5


def test_page_is_self_contained_and_escaped(page):
    sources = image_sources(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page refers to an external resource"
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page


def test_headline_numbers_come_first_and_settings_last(page):
    assert headline(page) == {
        "final test accuracy (round 2)": "0.7188 (95% CI 0.6190-0.8190)",
        "best test accuracy (round 1)": "0.7500",
        "final test balanced accuracy (round 2)": "0.6990 (95% CI 0.5790-0.8190)",
        "leak-free test accuracy (round 2)": "0.6490",
        "macro F1 (round 2)": "0.6690",
        "calibration error, ECE (round 2)": "0.0333",
        "rounds": "2",
        "wall time": "2 min 06 s",
        "deployment clock (sites in parallel)": "41.0 s",
    }
    order = [
        '<dl class="headline">',
        "Accuracy and loss per round",
        "Confusion matrix",
        "Per-class precision, recall and F1",
        "<h2>Sites</h2>",
        "Partition: training images",
        "Grad-CAM examples",
        "Settings that differ from the defaults",
        "<details><summary>All settings",
    ]
    positions = [page.index(text) for text in order]
    assert positions == sorted(positions)
    assert "Note:" not in page  # every artefact is there


def test_confusion_and_per_class_numbers_come_from_the_saved_predictions(recorded_run, page):
    files = sample_test_images()
    truth = np.asarray([label for _, label, _ in files])
    guess = np.asarray([predicted_class(label, j) for _, label, j in files])
    counts, normalized, no_prediction = report_data_confusion(recorded_run)
    expected = np.zeros((4, 5), dtype=int)
    for t, p in zip(truth, guess, strict=True):
        expected[t, p] += 1  # -1: the last column, no prediction
    assert no_prediction and counts.tolist() == expected.tolist()
    assert normalized[0].tolist() == pytest.approx([5 / 8, 2 / 8, 0, 0, 1 / 8])
    per_class = read_table(page, "per-class")
    for k, name in enumerate(CLASSES):
        hits = np.sum((truth == k) & (guess == k))
        precision, recall = hits / np.sum(guess == k), hits / np.sum(truth == k)
        assert per_class.loc[name, "support"] == 8
        assert per_class.loc[name, "recall"] == pytest.approx(recall, abs=1e-4)
        assert per_class.loc[name, "precision"] == pytest.approx(precision, abs=1e-4)
        assert per_class.loc[name, "f1"] == pytest.approx(
            2 * precision * recall / (precision + recall), abs=1e-4
        )
    assert per_class.loc["glioma", "recall"] == pytest.approx(5 / 8)  # the NaN row is wrong, not glioma
    # from the last round's row of federated_learning_results.csv
    classes = per_class.loc[list(CLASSES)]
    assert classes["specificity"].astype(float).tolist() == pytest.approx([0.9, 0.92, 0.94, 0.96])
    assert classes["ROC-AUC"].astype(float).tolist() == pytest.approx([0.95, 0.94, 0.93, 0.92])
    assert per_class.loc["pituitary", "sensitivity 95% CI"] == "95% CI 0.5000-0.8750"
    assert per_class.loc["macro avg", "specificity"] == ""
    assert per_class.loc["macro avg", "support"] == 32
    leak_free = np.asarray([j % 2 == 0 for _, _, j in files])
    assert "32 images, accuracy 0.7188" in page
    assert f"Leak-free accuracy {np.mean(truth[leak_free] == guess[leak_free]):.4f} on the 16" in page
    assert "1 of 32 images have non-finite probabilities" in page


def report_data_confusion(run: Path):
    from brainfl.report.run import confusion, read_run

    return confusion(read_run(run).predictions, len(CLASSES))


def test_participation_per_round_comes_from_the_audit_trail(page):
    table = read_table(page, "participation")
    assert table.columns.tolist() == ["site 0", "site 1", "site 2"]
    assert table.index.tolist() == ["1", "2"]
    assert table.loc["2"].tolist() == [
        "aggregated",
        "aggregated",
        "dropped: unusable update: array 0 contains NaN or infinite values",
    ]


def test_site_table_is_partition_csv_with_each_sites_last_validation(page):
    sites = read_table(page, "sites")
    expected = PARTITION.set_index("site")
    assert sites.index.tolist() == ["0", "1", "2"]
    assert sites[expected.columns].astype(int).equals(expected.astype(int))
    assert sites["rounds reported"].tolist() == [2, 2, 1]
    assert sites["last val accuracy"].tolist() == pytest.approx([0.5, 0.51, 0.42])


def test_final_round_site_scores_with_mean_worst_and_spread(page):
    scores = read_table(page, "site-scores")
    assert "held-out scores, round 2</h3>" in page  # site 2 reported round 1 only
    assert scores.index.tolist() == ["0", "1", "mean", "worst", "spread (max - min)"]
    assert scores["accuracy"].tolist() == pytest.approx([0.5, 0.51, 0.505, 0.5, 0.01])
    assert scores["balanced accuracy"].tolist() == pytest.approx([0.45, 0.47, 0.46, 0.45, 0.02])
    assert scores["sensitivity glioma"].tolist() == pytest.approx([0.9, 0.6, 0.75, 0.6, 0.3])
    assert scores["sensitivity notumor"].tolist() == pytest.approx([1.0, 0.8, 0.9, 0.8, 0.2])
    # site 1 has no pituitary scan: a blank cell, left out of the summary
    assert scores["sensitivity pituitary"].tolist() == ["0.7500", "", "0.7500", "0.7500", "0.0000"]


def test_a_run_without_the_clinical_columns_still_reports(tmp_path):
    from brainfl.evaluation.metrics import interval_columns

    run = record_run(tmp_path / "run", None)  # as an older version wrote it:
    for name, new in (
        (RESULTS_CSV, [*interval_columns(CLASSES), "parallel_elapsed_s"]),
        (SITE_CSV, [*site_header(CLASSES)[8:13], "total_s"]),
    ):
        pd.read_csv(run / name).drop(columns=new).to_csv(run / name, index=False)
    (run / AUDIT_JSONL).unlink()
    page = make_report(run)
    assert headline(page)["final test accuracy (round 2)"] == "0.7188"
    assert headline(page)["wall time"] == "2 min 06 s" and "deployment clock" not in page
    assert "Participation per round" not in page
    assert "final test balanced accuracy (round 2)" not in headline(page)
    assert "specificity" not in read_table(page, "per-class")
    assert read_table(page, "site-scores").columns.tolist() == ["accuracy"]


def test_short_settings_table_lists_only_what_differs(recorded_run, page):
    defaults = default_run_config()
    assert all(defaults[key] != value for key, value in CHANGED.items())
    assert defaults["image-size"] == IMAGE_SIZE
    differing = read_table(page, "settings-differing")
    expected = {*CHANGED, "data-dir", "output-dir", "class-names", "note"}
    assert set(differing.index) == expected
    assert differing.loc["partitioning", "value"] == "dirichlet"
    assert differing.loc["partitioning", "default"] == "iid"
    assert differing.loc["class-names", "value"] == ", ".join(CLASSES)
    every = read_table(page, "settings-all")
    assert set(every.index) == set(json.loads((recorded_run / "run_config.json").read_text()))
    assert page.index("settings-differing") < page.index("<details><summary>All settings")


def test_gradcam_examples_are_the_most_confident_right_and_wrong_per_class(recorded_run, page):
    names = {cam.name for cam in (recorded_run / report.GRADCAM_DIR).glob("*.png")}
    expected = set()
    for label, name in enumerate(CLASSES):
        images = sorted((SAMPLE / "Testing" / name).iterdir())
        expected.add(f"{name}_correct_{images[4 if label == 0 else 7].stem}.png")  # class 0's 7 is NaN
        expected.add(f"{name}_wrong_{images[6].stem}.png")
    assert names == expected
    for cam in (recorded_run / report.GRADCAM_DIR).glob("*.png"):
        with Image.open(cam) as image:
            assert image.size == (224, 224)
    assert len(image_sources(page)) == 4 + len(expected)  # curves, confusion, partition, reliability
    assert page.count(">correct: true ") == 4 and page.count(">wrong: true ") == 4
    assert ">wrong: true glioma, predicted meningioma (p=0.85), " in page


def test_missing_artefacts_give_notes_not_errors(tmp_path, recorded_run):
    run = record_run(tmp_path / "run", None)
    (run / PARTITION_CSV).unlink()
    (run / PREDICTIONS_CSV).unlink()
    shutil.copy(recorded_run / report.FIGURE_CONFUSION, run)  # of an earlier report: must go
    page = make_report(run)
    assert "no test_predictions.csv: no confusion matrix, per-class metrics or Grad-CAM" in page
    assert "no partition.csv: the partition figure shows each site&#39;s training images" in page
    assert not (run / report.FIGURE_CONFUSION).exists()
    assert (run / report.FIGURE_PARTITION).is_file()
    sites = read_table(page, "sites")
    assert sites["num_train"].tolist() == PARTITION["num_train"].tolist()
    assert len(image_sources(page)) == 2
    assert page.index("Note:") < page.index('<dl class="headline">')


def test_grad_cam_without_model_or_images_is_a_note_and_relative_paths_use_data_dir(tmp_path, model_file):
    run = record_run(tmp_path / "run", None)
    page = make_report(run)
    assert "no final_model.keras: no Grad-CAM examples" in page
    assert "Confusion matrix of the latest" in page
    shutil.copy(model_file, run / "final_model.keras")
    moved = [(tmp_path / "moved" / path.name, label, j) for path, label, j in sample_test_images()]
    write_predictions(run, moved, leak_free=False)
    page = make_report(run)
    assert "8 of 8 Grad-CAM example images not found" in page
    assert "Leak-free flags unknown (no official Testing split)" in page
    relative = [(path.relative_to(SAMPLE), label, j) for path, label, j in sample_test_images()]
    write_predictions(run, relative)  # image paths relative to the data-dir
    config = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**config, "data-dir": str(SAMPLE)}))
    page = make_report(run)
    assert "Note:" not in page and page.count(">correct: true ") == 4


def test_centralized_run_without_site_files(tmp_path):
    run = record_run(tmp_path / "run", None, {"centralized": True})
    for name in (SITE_CSV, PARTITION_CSV):
        (run / name).unlink()
    page = make_report(run)
    assert "no partition.csv and no per-site results" in page
    assert "No per-site results." in page
    assert not (run / report.FIGURE_PARTITION).exists()


def test_unusable_predictions_are_a_note(tmp_path):
    run = record_run(tmp_path / "run", None)
    table = pd.read_csv(run / PREDICTIONS_CSV).drop(columns="pituitary")
    table.to_csv(run / PREDICTIONS_CSV, index=False)
    assert "test_predictions.csv unusable (no column pituitary)" in make_report(run)


def test_not_a_run_folder_is_one_clear_line(tmp_path):
    for target, expected in (
        (tmp_path / "nothing", "run output folder not found"),
        (tmp_path, "no run_config.json"),
    ):
        with pytest.raises(BrainFLError, match=expected) as caught:
            report.make_report(target)
        assert "\n" not in str(caught.value)


def test_report_command(recorded_run, capsys):
    args = cli.build_parser().parse_args(["report", str(recorded_run)])
    with no_pipeline():
        args.handler(args)
    assert f"report written to {recorded_run / report.REPORT_HTML}" in capsys.readouterr().out


# ---------------------------------------------------------------- the browser check

CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.length > 0 && images.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-ok", ok ? "true" : "false");
  document.body.setAttribute("data-images-count", String(images.length));
  document.body.setAttribute("data-images-broken",
    String(images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length));
});
</script>"""


def run_chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def images_check(page: str, folder: Path) -> dict[str, str]:
    """Open a copy of ``page`` in headless Chromium; return what its injected script found."""
    checked = folder / "report.html"  # a copy in a folder of its own: no sibling file can help
    folder.mkdir()
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "\n</body>"))
    result = run_chromium("--dump-dom", checked.as_uri(), profile=folder / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"no <body> in Chromium's DOM dump: {result.stdout[:500]!r} {result.stderr[-1000:]!r}"
    return dict(re.findall(r'(data-images-[a-z]+)="([^"]*)"', body.group(1)))


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium absent (apt-get install chromium; CI has it)"
)
def test_report_renders_in_headless_chromium_with_every_image_loaded(page, tmp_path):
    expected = len(image_sources(page))
    found = images_check(page, tmp_path / "report")
    assert found == {"data-images-ok": "true", "data-images-count": str(expected), "data-images-broken": "0"}
    # the check itself sees a broken image: corrupt the first one's data
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    found = images_check(broken, tmp_path / "broken")
    assert found == {"data-images-ok": "false", "data-images-count": str(expected), "data-images-broken": "1"}


def test_reliability_diagrams_unscaled_and_with_the_calibrated_temperature(tmp_path, recorded_run):
    with Image.open(recorded_run / report.FIGURE_RELIABILITY[0]) as figure:  # no calibration.json
        assert figure.format == "PNG" and np.asarray(figure.convert("L")).std() > 5
    assert not (recorded_run / report.FIGURE_RELIABILITY[1]).exists()
    page = (recorded_run / report.REPORT_HTML).read_text()
    assert "Reliability diagram, unscaled" in page and "scaled by the calibrated temperature" not in page

    run = record_run(tmp_path / "calibrated", None)
    record = {"temperature": 0.5, "examples": 40, "sites": [{"site": 0, "examples": 40, "temperature": 0.5}]}
    (run / "calibration.json").write_text(json.dumps({**record, "at_grid_bound": False, "test": None}))
    page = make_report(run)
    unscaled, scaled = (Image.open(run / name) for name in report.FIGURE_RELIABILITY)
    with unscaled, scaled:  # the same predictions, sharpened by T = 0.5: other bins, other bars
        assert not np.array_equal(np.asarray(unscaled), np.asarray(scaled))
    assert "Reliability diagram, scaled by the calibrated temperature" in page
