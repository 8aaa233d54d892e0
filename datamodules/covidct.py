"""Large COVID-19 CT scan slice dataset (Maftouni et al. 2021, Kaggle
maedemaftouni/large-covid19-ct-slice-dataset): ``curated_data/curated_data/{1NonCOVID,2COVID,
3CAP}/`` with per-class metadata CSVs, read by the class-folder mechanism."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from datamodules import synthetic
from datamodules.base import dataset_root
from datamodules.image_folders import (
    ImageFolderConfig,
    ImageFolderDataModule,
    ImageItem,
    folder_key,
    relative,
)
from datamodules.preprocessing import is_junk

log = logging.getLogger(__name__)

#: The class folders of the download, in their numbered order.
COVIDCT_FOLDERS = {
    "NonCOVID": ("1noncovid", "noncovid"),
    "COVID": ("2covid", "covid"),
    "CAP": ("3cap", "cap"),
}
#: Metadata files by the class folder they describe: a ``folder_key`` of the file name that
#: contains the word (``meta_data_normal.csv``, ``meta_data_covid.csv``, ``meta_data_cap.csv``);
#: checked in this order, because "noncovid" contains "covid".
COVIDCT_METADATA_WORDS = (
    ("cap", "CAP"),
    ("normal", "NonCOVID"),
    ("noncovid", "NonCOVID"),
    ("covid", "COVID"),
)


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a CSV file in UTF-8 (with or without BOM), else Latin-1 (the
    metadata of the Large COVID-19 CT dataset is not all UTF-8)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def patients_by_file(path: Path) -> tuple[dict[str, str], str | None]:
    """``{file name or stem in lower case: patient id}`` from a metadata CSV, and why it could
    not be read. Columns are found by name: one containing "patient" (``Patient ID``) and one
    containing "file", else "name" (``File name``); a file listed for two patients is left out."""
    columns, rows = read_csv_rows(path)
    patient = next((c for c in columns if "patient" in folder_key(c)), None)
    file = next((c for c in columns if "file" in folder_key(c) and c != patient), None) or next(
        (c for c in columns if "name" in folder_key(c) and c != patient), None
    )
    if patient is None or file is None:
        return {}, f"{path.name} has no patient and file-name columns (columns: {columns})"
    mapping: dict[str, str] = {}
    conflicting: set[str] = set()
    for row in rows:
        name, who = (row.get(file) or "").strip(), (row.get(patient) or "").strip()
        if not name or not who:
            continue
        base = PurePosixPath(name.replace("\\", "/")).name.lower()
        for key in {base, PurePosixPath(base).stem}:
            if mapping.setdefault(key, who) != who:
                conflicting.add(key)
    return {k: v for k, v in mapping.items() if k not in conflicting}, None


class CovidCTDataModule(ImageFolderDataModule):
    """Large COVID-19 CT scan slice dataset (Maftouni et al. 2021): 7,593 COVID, 6,893 normal
    and 2,618 community-acquired pneumonia (CAP) slices, curated from seven public sets.

    ``classes: three`` (NonCOVID, COVID, CAP) or ``binary`` (NonCOVID, COVID; CAP counts as
    non-COVID). With ``patient_split`` the split keeps every patient in one part when the
    metadata CSVs name the patient of every image; otherwise, or without ``patient_split``, the
    split is by image (a logged notice says so, since slices of one patient are then in several
    parts). Patients are told apart per class folder, since the source sets reuse ids.
    """

    @dataclass
    class Config(ImageFolderConfig):
        """The ``data:`` keys for ``name: covidct`` (see ``ImageFolderConfig``).

        Attributes:
            classes: ``three`` (NonCOVID, COVID, CAP) or ``binary`` (CAP counts as NonCOVID).
            patient_split: keep each patient's slices in one part when the metadata allows.
        """

        name: str = "covidct"
        root: str = field(default_factory=lambda: dataset_root("Large-COVID19-CT-Slices"))
        classes: str = "three"
        patient_split: bool = True

    title = "Large COVID-19 CT slice dataset"
    #: The class folders' numbered order: 1NonCOVID, 2COVID, 3CAP.
    CLASS_NAMES = ("NonCOVID", "COVID", "CAP")
    FOLDERS = COVIDCT_FOLDERS
    #: ``curated_data/curated_data/<class>``: two levels inside the download.
    layout_depth = 2
    DOWNLOAD = "https://www.kaggle.com/datasets/maedemaftouni/large-covid19-ct-slice-dataset"
    LAYOUT = """\
  <root>/curated_data/curated_data/1NonCOVID/*.png   (6,893)
  <root>/curated_data/curated_data/2COVID/*.png      (7,593)
  <root>/curated_data/curated_data/3CAP/*.png        (2,618)
  <root>/meta_data_normal.csv, meta_data_covid.csv, meta_data_cap.csv   (Patient ID, File name)"""
    EXAMPLE_EXPERIMENT = "covidct_mednext_lite_s"

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_covidct(root, seed=seed, **options)

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        if self.config.classes == "binary":
            self.class_names = ["NonCOVID", "COVID"]

    def config_problems(self) -> list[str]:
        problems = super().config_problems()
        if self.config.classes not in ("three", "binary"):
            problems.append(f"classes must be three or binary, not {self.config.classes!r}")
        return problems

    def label_of(self, folder_class: str) -> int:
        if self.config.classes == "binary" and folder_class == "CAP":
            return self.class_names.index("NonCOVID")
        return super().label_of(folder_class)

    def split_details(self) -> dict[str, Any]:
        return dict(classes=self.config.classes, patient_split=self.config.patient_split)

    def find_items(self, root: Path) -> tuple[list[ImageItem], list[str]]:
        class_root, folders = self.find_class_root(root)
        items, problems = self.items_in(root, folders)
        if not self.config.patient_split:
            return items, problems
        patients, notes = self.patients(root, class_root)
        folder_classes = {relative(folder, root): c for c, folder in folders.items()}
        grouped = []
        for item in items:
            path = PurePosixPath(item.path)
            folder_class = folder_classes[path.parent.as_posix()]
            known = patients.get(folder_class, {})
            patient = known.get(path.name.lower()) or known.get(path.stem.lower())
            grouped.append((item, folder_class, patient))
        missing = [item.path for item, _, patient in grouped if patient is None]
        if missing:
            log.warning(
                "%s: %d of %d images have no patient in the metadata%s (e.g. %s); splitting by "
                "image, so slices of one patient may be in several parts",
                self.title,
                len(missing),
                len(items),
                f" ({'; '.join(notes)})" if notes else "",
                ", ".join(missing[:3]),
            )
            return items, problems
        return [
            ImageItem(item.path, item.label, group=f"{folder_class}/{patient}")
            for item, folder_class, patient in grouped
        ], problems

    def patients(self, root: Path, class_root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
        """Per class folder, ``{file name or stem: patient id}`` from the metadata CSVs found in
        the class folders' parent or any folder above it up to ``root`` (the nearest wins), and
        notes on what could not be used."""
        found: dict[str, dict[str, str]] = {}
        notes: list[str] = []
        folder = class_root
        while True:
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() != ".csv" or is_junk(path.name) or not path.is_file():
                    continue
                key = folder_key(path.stem)
                folder_class = next((c for word, c in COVIDCT_METADATA_WORDS if word in key), None)
                if folder_class is None or folder_class in found:
                    continue
                mapping, problem = patients_by_file(path)
                if problem:
                    notes.append(problem)
                else:
                    found[folder_class] = mapping
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
        notes += [f"no metadata CSV for {c}" for c in self.FOLDERS if c not in found]
        return found, notes


# --- synthetic copies ---------------------------------------------------------------------------

#: Large COVID-19 CT: (class folder, word of its metadata CSV, diagnosis) per class.
_COVIDCT = (
    ("1NonCOVID", "normal", "Normal"),
    ("2COVID", "covid", "COVID-19"),
    ("3CAP", "cap", "CAP"),
)
_COVIDCT_COUNTRIES = ("China", "Iran", "Türkiye")  # not ASCII: the real CSVs are not all UTF-8


def write_covidct(root: str | Path, seed: int = 0, per_class: int = 12) -> Path:
    """A fake Large COVID-19 CT slice dataset under ``root``:
    ``curated_data/curated_data/{1NonCOVID,2COVID,3CAP}/P<patient>_<slice>.png`` (2–3 slices per
    patient, ``per_class`` per class; patient numbers restart in every class, as ids of different
    source sets can coincide) and ``meta_data_{normal,covid,cap}.csv`` (``Patient ID``,
    ``File name``, ``Diagnosis``, ``Country``; Latin-1). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    curated = root / "curated_data" / "curated_data"
    for label, (folder, word, diagnosis) in enumerate(_COVIDCT):
        rows, index, patient = [], 0, 0
        while index < per_class:
            patient += 1
            country = _COVIDCT_COUNTRIES[patient % len(_COVIDCT_COUNTRIES)]
            for slice_number in range(min(int(rng.integers(2, 4)), per_class - index)):
                name = f"P{patient:03d}_{slice_number + 1:03d}.png"
                synthetic.save_scan(
                    synthetic.class_image(rng, label, len(_COVIDCT), color=False),
                    curated / folder / name,
                    index,
                )
                rows.append([f"P{patient:03d}", name, diagnosis, country])
                index += 1
        with open(root / f"meta_data_{word}.csv", "w", newline="", encoding="latin-1") as stream:
            writer = csv.writer(stream)
            writer.writerow(["Patient ID", "File name", "Diagnosis", "Country"])
            writer.writerows(rows)
    synthetic.write_junk(root, [curated / folder for folder, _, _ in _COVIDCT])
    return root
