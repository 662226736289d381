"""Dataset folder layouts: which one a data folder uses, and its scans with labels and patients.

A folder holds one of three layouts (:func:`detect_layout`); a ``labels.csv``
beside a ``Training``/``Testing`` split is refused, as either could be meant:

* ``labels.csv`` at the folder's root (:data:`LABELS_CSV`): columns
  ``path,label[,patient]``, paths relative to the folder, for scans not sorted
  into class folders; the class names are the sorted unique labels;
* ``Training/<class>/`` and/or ``Testing/<class>/`` (:data:`KAGGLE_SPLIT`, the
  Kaggle split): class names come from the Training folders;
* any other folder of class sub-folders (:data:`CLASS_FOLDERS`, as in an
  ImageFolder): the server's test set is a stratified hold-out.

Scans may sit at any depth under a class folder (patient or study folders);
the first folder level under the class folder is then the scan's patient,
and the splits keep a patient's scans together. Hidden files and folders are
skipped. A file with a scan-like suffix the decoder does not read is an
error naming it (or, with ``skip-unreadable``, a warning naming it).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG
from brainfl.data.decoding import SCAN_SUFFIXES, is_scan_file

TRAIN_SPLIT = "Training"
TEST_SPLIT = "Testing"
LABELS_FILE = "labels.csv"
KAGGLE_SPLIT = "kaggle split"
CLASS_FOLDERS = "class folders (hold-out test)"
LABELS_CSV = "labels.csv"
CSV_COLUMNS = ("path", "label", "patient")
# Folder names of a split layout that is not spelled Training/Testing (never class names).
SPLIT_LIKE_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation"})
# Suffixes of files that look like scans: one the decoder does not read is named, not skipped.
SCAN_LIKE_SUFFIXES = (
    *sorted(SCAN_SUFFIXES), ".gif", ".webp", ".jp2", ".j2k", ".pgm", ".ppm", ".ima",
    ".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd",
)  # fmt: skip


class Entry(NamedTuple):
    """One scan: its path, its label (index into the class names) and its patient (or None)."""

    path: Path
    label: int
    group: str | None


def is_hidden(path: Path | PurePosixPath) -> bool:
    """Whether a file or folder name is hidden (starts with a dot)."""
    return path.name.startswith(".")


def looks_like_scan(path: Path | PurePosixPath) -> bool:
    """Whether a file name ends in a scan-like suffix (read or not by the decoder)."""
    return path.name.lower().endswith(SCAN_LIKE_SUFFIXES)


def refuse_unsupported(paths: list[Path], skip_unsupported: bool) -> None:
    """One line naming the first scan-like file the decoder does not read; with ``skip_unsupported``,
    a logged warning for each instead."""
    if not paths:
        return
    if not skip_unsupported:
        raise BrainFLError(
            f"unsupported scan file {paths[0]} ({len(paths)} such files; convert them, remove them "
            "or set skip-unreadable=true to skip them)"
        )
    for path in paths:
        LOG.warning("skipping unsupported scan file %s", path)


def detect_layout(data_dir: Path) -> str:
    """:data:`LABELS_CSV`, :data:`KAGGLE_SPLIT` or :data:`CLASS_FOLDERS` (see the module docstring)."""
    if not data_dir.is_dir():
        raise BrainFLError(f"data directory not found: {data_dir}")
    split = [name for name in (TRAIN_SPLIT, TEST_SPLIT) if (data_dir / name).is_dir()]
    if (data_dir / LABELS_FILE).is_file():
        if split:
            raise BrainFLError(
                f"{data_dir} holds two layouts, a {LABELS_FILE} and a Kaggle split "
                f"({'/ and '.join(split)}/), so which scans train and test is unclear: to use the split, "
                f"move {LABELS_FILE} out of {data_dir}; to use {LABELS_FILE}, point data-dir at a folder "
                f"with {LABELS_FILE} and its scans but no {TRAIN_SPLIT}/ or {TEST_SPLIT}/"
            )
        return LABELS_CSV
    return KAGGLE_SPLIT if split else CLASS_FOLDERS


def find_classes(folder: Path) -> list[str]:
    """Sorted class names: the visible sub-folders of a folder, which holds no scan of its own (it
    would have no class) and no two folders named alike but for case or spaces (two spellings of
    one class would be two classes)."""
    if not folder.is_dir():
        raise BrainFLError(f"data folder not found: {folder}")
    refuse_loose_scans(folder, f"put it in {folder}/<class>/")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p))
    if not classes:
        raise BrainFLError(f"no class folders in {folder} (expected {folder}/<class>/*.jpg)")
    alike = alike_spellings(classes)
    if alike:
        raise BrainFLError(
            f"class folders of {folder} differ only in case or spaces: {', '.join(map(repr, alike))}; "
            "merge them into one"
        )
    return classes


def refuse_loose_scans(folder: Path, hint: str) -> None:
    """One line naming the first scan-like file directly in ``folder`` (where no scan belongs)."""
    loose = sorted(p for p in folder.iterdir() if p.is_file() and not is_hidden(p) and looks_like_scan(p))
    if loose:
        raise BrainFLError(f"scan outside a class folder: {loose[0]} ({hint})")


def alike_spellings(names: list[str]) -> list[str]:
    """The first set of distinct names that differ only in case or surrounding spaces (empty: none)."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        found = spellings.setdefault(name.strip().casefold(), [])
        if name not in found:
            found.append(name)
    return next((found for found in spellings.values() if len(found) > 1), [])


class _Walk(NamedTuple):
    scans: list[Path]  # files the decoder reads
    unsupported: list[Path]  # scan-like files it does not
    refused_links: list[tuple[Path, str]]  # symbolic links not followed, and why


def _link_problem(link: Path, class_dir: Path, dataset: Path) -> str | None:
    """Why a symbolic link under ``class_dir`` may not be followed, or None.

    A link may point anywhere outside the dataset (a scan kept on other storage),
    or inside its own class folder; one that points elsewhere in the dataset would
    give another folder's scans this class's label, and a folder link to a folder
    above it would list the same scans again and again.
    """
    if not link.exists():
        return "is dangling (its target does not exist)"
    resolved = (class_dir.resolve(), dataset.resolve())
    hop = Path(os.path.normpath(link.parent.absolute() / os.readlink(link)))  # where it points, not further
    target = link.resolve()
    for place, own, root in ((hop, class_dir.absolute(), dataset.absolute()), (target, *resolved)):
        if place.is_relative_to(root) and not place.is_relative_to(own):
            return f"points to {place}, outside its class folder {class_dir}"
    if link.is_dir() and link.parent.resolve().is_relative_to(target):
        return f"points to {target}, a folder above it (a loop)"
    return None


def _walk(folder: Path, class_dir: Path, dataset: Path) -> _Walk:
    """The scans, unsupported scan-like files and refused links under ``folder``, at any depth."""
    found = _Walk([], [], [])
    for path in sorted(folder.iterdir()):
        if is_hidden(path):
            continue
        if path.is_symlink():
            problem = _link_problem(path, class_dir, dataset)
            if problem:
                found.refused_links.append((path, problem))
                continue
        if path.is_dir():
            deeper = _walk(path, class_dir, dataset)
            for mine, more in zip(found, deeper, strict=True):
                mine += more
        elif path.is_file():
            if is_scan_file(path):
                found.scans.append(path)
            elif looks_like_scan(path):
                found.unsupported.append(path)
    return found


def _refused_links(links: list[tuple[Path, str]], skip: bool) -> None:
    if links and not skip:
        path, problem = links[0]
        raise BrainFLError(
            f"symbolic link {path} {problem}; remove it, or set skip-unreadable=true to skip such links "
            f"({len(links)} found)"
        )
    for path, problem in links:
        LOG.warning("skipping symbolic link %s: it %s", path, problem)


def folder_patient(relative: PurePosixPath | Path) -> str | None:
    """Patient of a scan from its path under its class folder: the first folder, if nested."""
    return relative.parts[0] if len(relative.parts) > 1 else None


def list_class_folders(
    folder: Path, class_names: list[str], skip_unsupported: bool = False, root: Path | None = None
) -> list[Entry]:
    """Every scan under ``folder/<class>/`` for each class, sorted by class then path.

    The groups are the patients where any scan is nested: a patient is its class
    and its folder (:func:`folder_patient`), so folders named alike in two
    classes are two patients; a scan directly in its class folder is then a
    patient of its own. Without nesting every group is None. Symbolic links are
    followed unless :func:`_link_problem` refuses them; ``root`` is the data folder
    when ``folder`` is one of its splits (a link into the other split is refused too).
    """
    entries: list[Entry] = []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = _walk(class_dir, class_dir, root or folder)
        _refused_links(found.refused_links, skip_unsupported)
        refuse_unsupported(found.unsupported, skip_unsupported)
        if not found.scans:
            raise BrainFLError(f"class folder has no images: {class_dir}")
        for path in found.scans:
            relative = path.relative_to(class_dir)
            patient = folder_patient(relative) or relative.as_posix()
            entries.append(Entry(path, label, f"{name}/{patient}"))
    if not any(len(entry.path.relative_to(folder).parts) > 2 for entry in entries):
        entries = [entry._replace(group=None) for entry in entries]
    return entries


def class_folders(folder: Path, class_names: list[str] | None) -> list[str]:
    """The class folders of ``folder``, checked against ``class_names`` (the label order) if given."""
    found = find_classes(folder)
    if class_names is None:
        return found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise BrainFLError(
            f"class folder {folder / unknown[0]} is not one of the classes {', '.join(class_names)}"
        )
    return class_names


def check_class_folders_layout(data_dir: Path, class_names: list[str] | None) -> list[str]:
    """:func:`class_folders` of a class-folders dataset: no scans at its root, no split-like folders."""
    refuse_loose_scans(
        data_dir,
        f"put scans in {data_dir}/<class>/, a {TRAIN_SPLIT}/{TEST_SPLIT} split, or list them in "
        f"{data_dir / LABELS_FILE}",
    )
    names = class_folders(data_dir, class_names)
    if {name.lower() for name in find_classes(data_dir)} <= SPLIT_LIKE_NAMES:
        raise BrainFLError(
            f"the folders of {data_dir} ({', '.join(find_classes(data_dir))}) look like splits, not "
            f"classes: name them {TRAIN_SPLIT} and {TEST_SPLIT}"
        )
    return names


def _csv_path(data_dir: Path, text: str, where: str) -> Path:
    if not text.strip():
        raise BrainFLError(f"{where}: empty path")
    relative = PurePosixPath(text.strip().replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise BrainFLError(f"{where}: path '{text}' must be relative to {data_dir}, inside it")
    path = data_dir / relative
    if not path.is_file():
        raise BrainFLError(f"{where}: unknown path '{text}' (no such file in {data_dir})")
    return path


def read_labels_csv(
    data_dir: Path, class_names: list[str] | None = None, skip_unsupported: bool = False
) -> tuple[list[Entry], list[str]]:
    """The scans listed in ``data_dir/labels.csv`` and the class names (sorted labels, or ``class_names``).

    Rows keep the file's order. Without a ``patient`` column the groups are
    None; a row with an empty patient is a patient of its own.
    """
    csv_file = data_dir / LABELS_FILE
    try:
        with csv_file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BrainFLError(f"cannot read {csv_file}: {error}") from None
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown or not {"path", "label"} <= set(header) or len(set(header)) != len(header):
        raise BrainFLError(f"{csv_file}: header {','.join(header)!r} is not path,label[,patient]")
    if not rows:
        raise BrainFLError(f"{csv_file}: no scans listed")
    parsed: list[tuple[Path, str, str | None]] = []
    seen: dict[Path, int] = {}
    unsupported = []
    for line, row in rows:
        where = f"{csv_file} line {line}"
        if len(row) != len(header):
            raise BrainFLError(f"{where}: {len(row)} columns, the header has {len(header)}")
        values = dict(zip(header, row, strict=True))
        path = _csv_path(data_dir, values["path"], where)
        label = values["label"].strip()
        if not label:
            raise BrainFLError(f"{where}: empty label")
        if path in seen:
            raise BrainFLError(f"{where}: '{values['path']}' is listed twice (also line {seen[path]})")
        seen[path] = line
        if not is_scan_file(path):
            unsupported.append(path)
            continue
        patient = values.get("patient", "").strip() or (f"line {line}" if "patient" in header else None)
        parsed.append((path, label, patient))
    refuse_unsupported(unsupported, skip_unsupported)
    _refuse_label_spellings(csv_file, [(seen[path], label) for path, label, _ in parsed])
    if class_names is None:
        _refuse_single_scan_labels(csv_file, [(seen[path], label) for path, label, _ in parsed])
    names = class_names if class_names is not None else sorted({label for _, label, _ in parsed})
    index = {name: i for i, name in enumerate(names)}
    for path, label, _ in parsed:
        if label not in index:
            raise BrainFLError(
                f"{csv_file} line {seen[path]}: label '{label}' is not one of the classes {', '.join(names)}"
            )
    return [Entry(path, index[label], patient) for path, label, patient in parsed], names


def _refuse_label_spellings(csv_file: Path, labels: list[tuple[int, str]]) -> None:
    """Refuse labels that differ only in case or surrounding spaces (``Glioma``, ``glioma``), which
    would become two classes, naming the lines of each spelling."""
    first_line: dict[str, int] = {}
    for line, label in labels:
        first_line.setdefault(label, line)
    alike = alike_spellings([label for _, label in labels])
    if alike:
        seen = ", ".join(f"'{label}' (line {first_line[label]})" for label in alike)
        raise BrainFLError(f"{csv_file}: labels differ only in case or spaces: {seen}; spell them alike")


def _refuse_single_scan_labels(csv_file: Path, labels: list[tuple[int, str]]) -> None:
    """Without ``class-names`` the labels are the classes: a label given to one scan only is a
    misspelling far more often than a class (and a class needs scans to train and test on)."""
    lines: dict[str, list[int]] = {}
    for line, label in labels:
        lines.setdefault(label, []).append(line)
    single = [(label, found[0]) for label, found in lines.items() if len(found) == 1]
    if single and len(lines) > 1:
        label, line = single[0]
        others = ", ".join(sorted(name for name in lines if name != label))
        raise BrainFLError(
            f"{csv_file} line {line}: label '{label}' is given to this scan only (the other labels: "
            f"{others}); correct it if misspelt, or name the classes with class-names"
        )


def split_patient(file: str) -> str | None:
    """Patient of a ``<split>/<class>/...`` file name (as check-data lists them), if nested: its class
    and patient folder, ``<class>/<patient>``, as the loader groups it."""
    parts = PurePosixPath(file.replace("\\", "/")).parts
    return f"{parts[1]}/{parts[2]}" if len(parts) > 3 else None
