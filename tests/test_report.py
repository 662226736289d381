"""Tests of the run report: figures and report.html from a small recorded run, checked in a real browser."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainfl import report
from brainfl.config import RunSettings
from brainfl.errors import BrainFLError
from brainfl.predict import predict_files
from brainfl.results import RESULTS_CSV, SITE_CSV, SITE_FIELDS, CsvAppender, results_header
from conftest import CLASSES
from test_predict import IMAGE_SIZE, SAMPLE, tiny_model_file

CHROMIUM = Path("/usr/bin/chromium")


def record_run(
    out: Path, model_file: Path, cache: Path, leak_free: bool = False, partitions: bool = True
) -> Path:
    """A run's output folder written by hand as the ServerApp would (3 rounds, 2 sites), no Flower."""
    out.mkdir(parents=True)
    shutil.copy(model_file, out / "final_model.keras")
    config = RunSettings(
        num_server_rounds=2,
        image_size=IMAGE_SIZE,
        num_partitions=2,
        data_dir=str(SAMPLE),
        output_dir=str(out),
        cache_dir=str(cache),
    ).to_config()
    if not partitions:
        del config["num-partitions"]
    (out / "run_config.json").write_text(json.dumps({**config, "class-names": list(CLASSES)}, indent=2))
    header = results_header(CLASSES)
    if "leak_free_accuracy" not in header:
        header.insert(header.index("train_loss"), "leak_free_accuracy")
    results = CsvAppender(out / RESULTS_CSV, header)
    sites = CsvAppender(out / SITE_CSV, SITE_FIELDS)
    for round_, accuracy in enumerate((0.25, 0.41, 0.53)):
        row = {"round": round_, "loss": 1.5 - 0.2 * round_, "accuracy": accuracy, "f1_macro": accuracy - 0.05}
        row.update({f"recall_{name}": accuracy for name in CLASSES}, elapsed_s=10.0 * round_)
        if leak_free:
            row["leak_free_accuracy"] = accuracy - 0.07
        if round_:
            row.update(train_loss=1.4, train_accuracy=0.5, val_loss=1.3, val_accuracy=0.45, sites_trained=2)
            row["sites_failed"] = 0
            for site in (0, 1):
                sites.append(
                    {
                        "round": round_,
                        "site": site,
                        "num_train": 36,
                        "num_val": 4,
                        "train_loss": 1.4 - 0.1 * site,
                        "train_accuracy": 0.5,
                        "val_loss": 1.3 - 0.1 * round_ - 0.05 * site,
                        "val_accuracy": 0.3 + 0.1 * round_ + 0.05 * site,
                    }
                )
        results.append(row)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, model_file) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    run = record_run(tmp / "run", model_file, tmp / "cache")
    report.make_report(run)
    return run


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (the standard library; pandas.read_html needs lxml)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_tables(page: str) -> list[pd.DataFrame]:
    """The page's tables, first row as header, the first column named 'index' when it has no name."""
    parser = _Tables()
    parser.feed(page)
    frames = []
    for rows in parser.tables:
        header = [name or "index" for name in rows[0]]
        frame = pd.DataFrame(rows[1:], columns=header)
        frames.append(_numeric(frame))
    return frames


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().all():
            frame[column] = converted
    return frame


def image_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


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


def test_report_is_self_contained_with_all_sections(recorded_run):
    page = (recorded_run / report.REPORT_HTML).read_text()
    sources = image_sources(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page refers to an external resource"
    for text in (
        "Run configuration",
        "dirichlet-alpha",
        "Partition: images per class per site",
        "Per-round results",
        "precision_macro",
        "per-class precision, recall and F1",
        "macro avg",
        "32 images (official Testing split)",
        "Grad-CAM examples",
        *CLASSES,
    ):
        assert text in page, text
    assert "leak_free_accuracy" not in page and "leak-free" not in page


def test_partition_table_counts_every_training_image_per_class_and_site(recorded_run):
    tables = read_tables((recorded_run / report.REPORT_HTML).read_text())
    partition = next(t for t in tables if "total" in t.columns and "glioma" in t.columns)
    assert len(partition) == 2
    assert partition[list(CLASSES)].to_numpy().sum(axis=0).tolist() == [20, 20, 20, 20]
    assert partition["total"].sum() == 80
    assert (partition["train"] + partition["val"] == partition["total"]).all()


def test_per_class_metrics_and_gradcam_examples_match_the_model(recorded_run, model_file):
    predictions = predict_files(model_file, [SAMPLE / "Testing"])
    truth = np.asarray([Path(f).parent.name for f in predictions["file"]])
    predicted = predictions["predicted_class"].to_numpy()
    tables = read_tables((recorded_run / report.REPORT_HTML).read_text())
    per_class = next(t for t in tables if "f1" in t.columns).set_index("index")
    for name in CLASSES:
        hits = np.sum((truth == name) & (predicted == name))
        assert per_class.loc[name, "support"] == 8
        assert per_class.loc[name, "recall"] == pytest.approx(hits / 8, abs=1e-4)
    expected = sum(
        int(np.any((truth == name) & (predicted == name)))
        + int(np.any((truth == name) & (predicted != name)))
        for name in CLASSES
    )
    cams = sorted((recorded_run / report.GRADCAM_DIR).glob("*.png"))
    assert len(cams) == expected
    for cam in cams:
        with Image.open(cam) as image:
            assert image.size == (224, 224)
    page = (recorded_run / report.REPORT_HTML).read_text()
    assert len(image_sources(page)) == 3 + expected
    assert page.count(">correct: true ") + page.count(">wrong: true ") == expected


def test_leak_free_column_is_shown_and_partitions_fall_back_to_site_metrics(tmp_path, model_file):
    run = record_run(tmp_path / "run", model_file, tmp_path / "cache", leak_free=True, partitions=False)
    page = report.make_report(run).read_text()
    assert "leak-free accuracy <b>0.4600</b>" in page
    assert "leak_free_accuracy" in page
    assert "partition sizes from site_metrics.csv" in page
    tables = read_tables(page)
    partition = next(t for t in tables if "total" in t.columns)
    assert partition["total"].tolist() == [40, 40]


def test_report_without_model_or_data_still_writes_a_page(tmp_path, model_file):
    run = record_run(tmp_path / "run", model_file, tmp_path / "cache")
    (run / "final_model.keras").unlink()
    config = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**config, "data-dir": str(tmp_path / "moved")}))
    page = report.make_report(run).read_text()
    assert "no final_model.keras" in page and "not found" in page
    assert (run / report.FIGURE_CURVES).is_file() and (run / report.FIGURE_PARTITION).is_file()


def test_not_a_run_folder_is_one_clear_line(tmp_path):
    for target, expected in (
        (tmp_path / "nothing", "run output folder not found"),
        (tmp_path, "no run_config.json"),
    ):
        with pytest.raises(BrainFLError, match=expected) as caught:
            report.make_report(target)
        assert "\n" not in str(caught.value)


def test_report_command(recorded_run, capsys):
    parser = argparse.ArgumentParser(prog="brainfl")
    report.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(recorded_run)])
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
def test_report_renders_in_headless_chromium_with_every_image_loaded(recorded_run, tmp_path):
    page = (recorded_run / report.REPORT_HTML).read_text()
    expected = len(image_sources(page))
    found = images_check(page, tmp_path / "report")
    assert found == {"data-images-ok": "true", "data-images-count": str(expected), "data-images-broken": "0"}
    # the check itself sees a broken image: corrupt the first one's data
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    found = images_check(broken, tmp_path / "broken")
    assert found == {"data-images-ok": "false", "data-images-count": str(expected), "data-images-broken": "1"}
