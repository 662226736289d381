"""Property-based tests of the data loader (Hypothesis): generated data folders, in each layout, with
patient folders, odd file names, links, bad files and label spellings, either load with exactly the
scans, labels and patients they hold or are refused with a one-line BrainFLError.

Each example is built in a temporary folder of tiny PNGs; what it should give is worked out here from
what was generated (the documented layouts and rules), never by asking the loader.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hypothesis import event, example, given
from hypothesis import strategies as st

from brainfl.core.errors import BrainFLError
from brainfl.data.loading import ImageSet, load_dataset
from conftest import write_image

# Class names: accents, other scripts, an inner and a leading space, two spellings of one class.
CLASS_NAMES = ("glioma", "Glioma", "meningioma", "no tumor", "tumör", "класс", " pituitary")
STEMS = st.text(st.sampled_from("abxyzAZ09 éü中-_,'"), min_size=1, max_size=6)
PATIENTS = ("", "p1", "p 2", "pé")  # "": a scan directly in its class folder
# What a class folder may hold besides its scans.
IGNORED = ("text", "hidden")  # a text file, hidden files and folders: not scans
BAD = ("broken", "unsupported", "link_other_class", "loop", "dangling")  # refused, or skipped
FOLLOWED = ("link_outside", "link_own", "folder_outside")  # links that are followed
EXTRAS = (*IGNORED, *BAD, *FOLLOWED)


RARELY = st.sampled_from([False, False, False, False, True])  # (Hypothesis favours edge values)


def sometimes(extras: st.SearchStrategy[set[str]]) -> st.SearchStrategy[set[str]]:
    """``extras`` in about a third of the examples, else none (most examples then load)."""
    return st.one_of(st.just(set()), st.just(set()), extras)


@dataclasses.dataclass
class Expected:
    """What one split (or labels.csv) should load as; ``refused`` when it must be refused."""

    scans: dict[str, str] = dataclasses.field(default_factory=dict)  # file under the data folder: class
    patients: dict[str, str] | None = None  # file: patient (None: not grouped)
    refused: bool = False


class Tree:
    """Writes a generated folder under ``root`` and keeps the seed of each image distinct."""

    def __init__(self, root: Path) -> None:
        self.root, self.outside, self.seed = root / "data", root / "outside", 0

    def image(self, path: Path) -> Path:
        self.seed += 1
        return write_image(path, self.seed, size=16)

    def bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def link(self, path: Path, target: Path | str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


def scan_path(stem: str, patient: str, study: bool, suffix: str) -> str:
    """A scan's path under its class folder: ``[patient/[study/]]stem.suffix``."""
    return "/".join(part for part in (patient, "study" if patient and study else "", stem + suffix) if part)


@st.composite
def class_folder(draw: st.DrawFn) -> tuple[list[str], set[str]]:
    """A class folder's scans (paths under it: ``[patient/[study/]]stem.png``) and extras."""
    scans = draw(
        st.lists(
            st.builds(
                scan_path,
                STEMS,
                st.sampled_from(PATIENTS),
                st.booleans(),
                st.sampled_from([".png", ".PNG"]),
            ),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    return scans, draw(sometimes(st.sets(st.sampled_from(EXTRAS), min_size=1, max_size=3)))


def write_class_folder(
    tree: Tree, folder: Path, scans: list[str], extras: set[str], other_scan: Path, skip: bool
) -> tuple[list[str], bool]:
    """Write one class folder; return the paths under it that must load, and whether it must be
    refused (a bad file or link, unless skipped)."""
    for scan in scans:
        tree.image(folder / scan)
    loaded = list(scans)
    if "text" in extras:
        tree.bytes(folder / "notes.txt", b"not a scan")
    if "hidden" in extras:
        tree.image(folder / ".hidden.png")
        tree.image(folder / ".thumbs" / "t.png")
    if "broken" in extras:
        tree.bytes(folder / "broken.png", b"\x89PNG but not really")
    if "unsupported" in extras:
        tree.bytes(folder / "volume.nii", b"\x00" * 64)
    if "link_other_class" in extras:
        tree.link(folder / "other-link.png", other_scan)
    if "loop" in extras:
        tree.link(folder / "loop", ".")
    if "dangling" in extras:
        tree.link(folder / "gone.png", "no-such-file.png")
    if "link_outside" in extras:
        tree.link(folder / "kept-elsewhere.png", tree.image(tree.outside / f"{folder.name}-{tree.seed}.png"))
        loaded.append("kept-elsewhere.png")
    if "link_own" in extras:
        tree.link(folder / "own-link.png", scans[0])
        loaded.append("own-link.png")
    if "folder_outside" in extras:
        shared = tree.outside / f"{folder.name}-folder-{tree.seed}"
        tree.image(shared / "a.png")
        tree.image(shared / "b.png")
        tree.link(folder / "shared", shared)
        loaded += ["shared/a.png", "shared/b.png"]
    return loaded, bool(extras & set(BAD)) and not skip


def expect_split(split_dir: str, classes: dict[str, list[str]]) -> Expected:
    """Scans and patients of class folders: the first folder under a class folder is the patient (a
    class's own, so folders named alike in two classes are two patients); a scan directly in its
    class folder is then a patient of its own; no nesting: no patients."""
    prefix = f"{split_dir}/" if split_dir else ""
    expected = Expected()
    patients = {}
    for name, scans in classes.items():
        for scan in scans:
            file = f"{prefix}{name}/{scan}"
            expected.scans[file] = name
            patients[file] = f"{name}/{scan.split('/')[0]}"
    if any("/" in scan for scans in classes.values() for scan in scans):
        expected.patients = patients
    return expected


def alike(names: Iterable[str]) -> bool:
    """Whether two distinct names differ only in case or surrounding spaces."""
    names = set(names)
    return len({name.strip().casefold() for name in names}) < len(names)


@st.composite
def folder_layout(draw: st.DrawFn, kaggle: bool) -> tuple[dict, dict | None, set[str]]:
    names = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=2, max_size=3, unique=True))
    train = {name: draw(class_folder()) for name in names}
    test = None
    if kaggle:
        test_names = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        test = {name: draw(class_folder()) for name in test_names}
    flags = draw(
        sometimes(
            st.sets(st.sampled_from(["loose_scan", "unknown_test_class"] if kaggle else ["loose_scan"]))
        )
    )
    return train, test, flags


def build_folders(tree: Tree, spec: tuple[dict, dict | None, set[str]], skip: bool) -> list[Expected]:
    """Write a class-folders or Kaggle-split tree; the expected training (and test) sets."""
    train, test, flags = spec
    splits = [("Training", train), ("Testing", dict(test))] if test is not None else [("", train)]
    if test is not None and "unknown_test_class" in flags:
        splits[1][1]["hospital-only"] = ([f"x{i}.png" for i in range(2)], set())
    folders = [tree.root / split / name for split, classes in splits for name in classes]
    firsts = {
        folder: folder / classes[folder.name][0][0]
        for (split, classes) in splits
        for folder in folders
        if folder.parent == tree.root / split and folder.name in classes
    }
    results = []
    for split, classes in splits:
        split_dir = tree.root / split
        loaded, refused = {}, False
        for name, (scans, extras) in classes.items():
            other = next(scan for folder, scan in firsts.items() if folder != split_dir / name)
            loaded[name], bad = write_class_folder(tree, split_dir / name, scans, extras, other, skip)
            refused |= bad
        if "loose_scan" in flags:
            tree.image(split_dir / "stray.png")  # in no class folder: its class is unknown
        expected = expect_split(split, loaded)
        expected.refused = refused or alike(classes) or "loose_scan" in flags
        if split == "Testing":
            expected.refused |= not set(classes) <= set(train)
        results.append(expected)
    return results


@st.composite
def labels_csv_layout(draw: st.DrawFn) -> dict:
    names = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=2, max_size=3, unique=True))
    rows = []
    for name in names:
        # Mostly two scans or more per label, spelt alike but for spaces; now and then one scan, or
        # one row in capitals (both refused).
        one_scan, capitals = draw(RARELY), draw(RARELY)
        stems = draw(
            st.lists(STEMS, min_size=1 if one_scan else 2, max_size=1 if one_scan else 3, unique=True)
        )
        for index, stem in enumerate(stems):
            spelling = name.upper() if capitals and index == 0 else draw(st.sampled_from([name, f" {name} "]))
            rows.append((f"{name}-{stem}.png", spelling, draw(st.sampled_from(["", "p1", " p1 ", "p 2"]))))
    return {
        "rows": rows,
        "patient_column": draw(st.booleans()),
        "extras": draw(
            sometimes(
                st.sets(st.sampled_from(["missing", "unsupported", "broken", "twice", "unlisted", "split"]))
            )
        ),
    }


def build_labels_csv(tree: Tree, spec: dict, skip: bool) -> Expected:
    """Write scans in ``scans/`` and a ``labels.csv`` listing them; the expected training set."""
    rows = [(f"scans/{file}", label, patient) for file, label, patient in spec["rows"]]
    for file, _, _ in rows:
        tree.image(tree.root / file)
    extras, first_label = spec["extras"], rows[0][1]
    listed = list(rows)
    if "broken" in extras:
        tree.bytes(tree.root / "scans/broken.png", b"not a png")
        listed.append(("scans/broken.png", first_label, ""))
    if "unsupported" in extras:
        tree.bytes(tree.root / "scans/volume.nii", b"\x00" * 64)
        listed.append(("scans/volume.nii", first_label, ""))
    if "missing" in extras:
        listed.append(("scans/missing.png", first_label, ""))
    if "twice" in extras:
        listed.append(rows[0])
    if "unlisted" in extras:
        tree.image(tree.root / "scans/not-listed.png")  # labels.csv says which scans count
    if "split" in extras:
        tree.image(tree.root / "Training" / "glioma" / "x.png")
    with (tree.root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"] if spec["patient_column"] else ["path", "label"])
        writer.writerows(row if spec["patient_column"] else row[:2] for row in listed)
    # Rows that are scans (the broken one too: it fails when decoded) count towards each label.
    counted = [label.strip() for file, label, _ in listed[: len(rows) + ("broken" in extras)]]
    expected = Expected(scans={file: label.strip() for file, label, _ in rows})
    if spec["patient_column"]:
        expected.patients = {file: patient.strip() or f"own:{file}" for file, _, patient in rows}
    expected.refused = (
        bool(extras & {"missing", "twice", "split"})
        or (bool(extras & {"broken", "unsupported"}) and not skip)
        or alike(counted)
        or (len(set(counted)) > 1 and min(counted.count(label) for label in counted) == 1)
    )
    return expected


def assert_loaded(images: ImageSet, expected: Expected, class_names: list[str]) -> None:
    assert list(images.class_names) == class_names
    got = {file: images.class_names[label] for file, label in zip(images.files, images.labels, strict=True)}
    assert got == expected.scans
    if expected.patients is None:
        assert images.groups is None
    else:
        assert images.groups is not None
        assert partition(dict(zip(images.files, images.groups, strict=True))) == partition(expected.patients)


def partition(patients: dict[str, str]) -> set[frozenset[str]]:
    """The files grouped by patient, whatever the patients are called."""
    groups: dict[str, set[str]] = {}
    for file, patient in patients.items():
        groups.setdefault(patient, set()).add(file)
    return {frozenset(files) for files in groups.values()}


layouts = st.one_of(
    st.tuples(st.just("class folders"), folder_layout(kaggle=False)),
    st.tuples(st.just("kaggle split"), folder_layout(kaggle=True)),
    st.tuples(st.just("labels.csv"), labels_csv_layout()),
)


TWO_CLASSES = {"glioma": (["a.png", "p1/b.png"], set()), "no tumor": (["c.png", "d.png"], set())}


@given(layouts, st.booleans())
@example(("kaggle split", (TWO_CLASSES, {"no tumor": (["e.png"], {"link_other_class"})}, set())), True)
@example(("kaggle split", (TWO_CLASSES, {"glioma": (["e.png"], set())}, {"loose_scan"})), False)
@example(("class folders", ({**TWO_CLASSES, "Glioma": (["f.png"], set())}, None, set())), False)
@example(
    (
        "labels.csv",
        {
            "rows": [("a.png", "x", ""), ("b.png", "x", ""), ("c.png", "y", ""), ("d.png", "y", "")],
            "patient_column": False,
            "extras": {"split"},
        },
    ),
    False,
)
def test_a_data_folder_loads_exactly_its_scans_labels_and_patients_or_is_refused_in_one_line(layout, skip):
    kind, spec = layout
    with tempfile.TemporaryDirectory() as folder:
        tree = Tree(Path(folder))
        if kind == "labels.csv":
            expected = [build_labels_csv(tree, spec, skip)]
        else:
            expected = build_folders(tree, spec, skip)
        try:
            dataset = load_dataset(tree.root, 16, 1, Path(folder) / "cache", skip, test_fraction=0)
        except BrainFLError as error:
            event(f"{kind}: refused")
            message = str(error)
            assert len(message.splitlines()) == 1 and message.isprintable(), repr(message)
            assert any(split.refused for split in expected), f"refused: {message}"
            return
        event(f"{kind}: loaded")
        assert not any(split.refused for split in expected), "loaded a folder that must be refused"
        class_names = sorted(set(expected[0].scans.values()))
        assert_loaded(dataset.train, expected[0], class_names)
        if kind == "kaggle split":
            assert dataset.test_is_official
            assert_loaded(dataset.test, expected[1], class_names)
        else:
            assert len(dataset.test) == 0
