"""Hugging Face ``datasets`` as training data: a Hub dataset id or a local copy becomes audio files and an index
with the dataset's own splits, so the feature cache, the splits and the loaders work on it unchanged.

    python train.py --hf_dataset=user/name                # a Hub dataset stored as parquet (the Hub's usual format)
    python train.py --hf_dataset=path/to/copy             # datasets.save_to_disk output, or a folder of parquet files
    python train.py --hf_dataset=user/name --split=stratified   # pool its splits and re-split (any split works)

Reading: ``datasets.load_from_disk`` for a ``save_to_disk`` folder, else ``datasets.load_dataset(id_or_folder,
hf_config)`` with every split (for a Hub id the copy in datasets' cache is used when there is one). ``datasets``
4+ decodes ``Audio`` with torchcodec (ffmpeg); here the audio column is cast to ``Audio(decode=False)``, which
gives the stored ``{"bytes", "path"}``, and the bytes are written as files that soundfile decodes like any other
(a row with a local file and no bytes is read where it is). A dataset stored as loose audio files (``audiofolder``)
is built by ``datasets`` itself through torchcodec; without it the error says so and points at ``--data_root``.

Columns: the audio column (``hf_audio_column``; default: the dataset's one ``Audio`` column) and the label column
(``hf_label_column``; default: its one ``ClassLabel`` column). A ``ClassLabel``'s names, in their order, are the
class ids; a plain string or integer column gives its sorted values. Rows without a label (-1) are skipped.

Splits: the dataset's splits named ``train``, ``validation`` (or ``valid``/``val``/``dev``) and ``test`` become
the parts ``train``, ``val`` and ``test`` of the index's ``split`` column (``hf_splits`` maps other names, e.g.
``train=train,val=dev``); other splits are not used. ``split=predefined`` (:mod:`data.splits`, the default with
``--hf_dataset``) keeps those parts; any other split pools them and splits again.

Files: ``<cache_dir>/hf_datasets/<key>/<name>/<part>/<row>_<file name>`` and the index
``<cache_dir>/hf_datasets/<key>/<name>/audio_dataset.csv`` (``path,label,split``), written last and atomically,
so an interrupted extraction is redone. ``key`` hashes the source, config, columns, split mapping and every
split's fingerprint (``datasets`` derives it from the data files, and for the Hub from the revision; a
``save_to_disk`` copy records its own): another revision is another folder, so the feature cache (keyed by file
path, size and time) misses and nothing stale is reused. Nothing is written into the Hugging Face cache except by
``datasets`` itself. ``rm -r <cache_dir>/hf_datasets`` reclaims the space.

Offline (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, or the Hub unreachable within 3 s) a Hub id loads from
datasets' cache at once or fails with a :class:`~data.index.DataError` that says how to get a local copy.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import soundfile as sf
from experiment.progress import progress

from data.audio import AUDIO_EXTENSIONS
from data.index import ENCODING, DataError, Index, probe, read_index, warn_skipped
from data.splits import SPLIT

INDEX_NAME = "audio_dataset.csv"
# our part <- the dataset's split names it is read from by default, in order of preference
PART_ALIASES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
FOLDER_ROUTE = ("or train on a folder of audio instead: --data_root=<folder>/<label>/<audio files> (GTZAN: the Kaggle "
                "download, see the README's 'Get GTZAN')")


def hub_endpoint() -> str:
    """The Hub URL ``datasets`` downloads from (``HF_ENDPOINT``, default https://huggingface.co)."""
    import datasets
    return datasets.config.HF_ENDPOINT


def is_local(source: str) -> bool:
    """Whether ``--hf_dataset`` names a local folder (else a Hub id)."""
    return Path(source).expanduser().is_dir()


def load_message(source: str, err: BaseException, offline: bool) -> str:
    """The DataError text for a dataset that could not be loaded: what failed and why, then the ways out (the
    dataset's cache and ``HF_DATASETS_OFFLINE``, a local copy, the folder route); a loading-script dataset and a
    local folder get their own."""
    import datasets
    what = f"could not load the Hugging Face dataset {source!r} ({type(err).__name__}: {err})."
    if _caused_by_torchcodec(err):
        return (f"{what}\n  It is stored as audio files, which datasets builds into a dataset through torchcodec (pip "
                "install torchcodec; it needs ffmpeg). Without it, download the files and train on them as a folder: "
                f"--data_root=<folder>/<label>/<audio files>, or use a parquet copy of the dataset.")
    if is_local(source):
        return (f"{what}\n  A local copy is a save_to_disk folder (with dataset_dict.json) or a folder of data files "
                "(parquet, Arrow, CSV/JSON), e.g. from `hf download ID --repo-type dataset --local-dir PATH`;\n  "
                f"{FOLDER_ROUTE}.")
    if "scripts are no longer supported" in str(err):
        return (f"{what}\n  {source} is a script-based dataset: datasets >= 4 no longer runs loading scripts. If its "
                f"Hub page lists a parquet conversion (the refs/convert/parquet branch), get it on a connected machine "
                f"with `hf download {source} --repo-type dataset --revision refs/convert/parquet --local-dir PATH` and "
                f"pass --hf_dataset=PATH;\n  {FOLDER_ROUTE}.")
    state = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if datasets.config.HF_HUB_OFFLINE else
             f"{hub_endpoint()} is not reachable" if offline else f"it was looked up on {hub_endpoint()}")
    return (f"{what}\n  {state}; offline (HF_DATASETS_OFFLINE=1, or no connection) only a copy already in datasets' "
            f"cache ({datasets.config.HF_DATASETS_CACHE}) is used.\n"
            f"  Use a local copy: on a connected machine `hf download {source} --repo-type dataset --local-dir PATH` "
            f"(its data files) or `datasets.load_dataset({source!r}).save_to_disk(PATH)`, then --hf_dataset=PATH;\n"
            f"  {FOLDER_ROUTE}.")


def _caused_by_torchcodec(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised from is ``datasets`` missing torchcodec."""
    while err is not None:
        if "torchcodec" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def _offline_datasets():
    """``datasets`` in offline mode for the block: it then reads its cache at once instead of retrying the Hub
    for ~20 s."""
    import datasets
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def open_dataset(source: str, config_name: str = ""):
    """Every split of the dataset ``source`` as a ``datasets.DatasetDict`` (a single ``Dataset`` becomes its
    ``train`` split).

    ``source``: a ``save_to_disk`` folder (``load_from_disk``), another local folder (``load_dataset``: parquet,
    Arrow, CSV/JSON...) or a Hub id (``load_dataset``; the Hub is probed first, 3 s, and when it is
    unreachable or ``HF_DATASETS_OFFLINE`` is set only datasets' cache is read). ``config_name``: the dataset's
    configuration (subset); empty: its default.
    Raises DataError naming the dataset, ``HF_DATASETS_OFFLINE``, a local copy and the folder route (see
    :func:`load_message`).
    """
    import datasets

    from models.weights import reachable  # the 3 s probe the weights loaders use
    path = Path(source).expanduser()
    offline = False
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(str(path), config_name or None)
        else:
            offline = datasets.config.HF_HUB_OFFLINE or not reachable(hub_endpoint())
            with _offline_datasets() if offline else contextlib.nullcontext():
                loaded = datasets.load_dataset(source, config_name or None)
    except Exception as err:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, RuntimeError (scripts)...
        raise DataError(load_message(source, err, offline)) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"--hf_dataset={source}: got a {type(loaded).__name__}, not a dataset with splits")
    return loaded


def split_map(names, spec: str = "") -> dict[str, str]:
    """{our part (train/val/test): the dataset split it is read from}.

    ``spec`` (``hf_splits``): ``part=split`` pairs separated by commas, e.g. ``train=train,val=dev``; empty:
    :data:`PART_ALIASES`. Raises DataError for a bad pair, an unknown split, or no training split.
    """
    names = list(names)
    if spec:
        out = {}
        for item in spec.split(","):
            part, _, name = (s.strip() for s in item.partition("="))
            if part not in PART_ALIASES or not name:
                raise DataError(f"--hf_splits={spec!r}: write part=split pairs with parts train, val, test "
                                f"(e.g. train=train,val=validation); got {item!r}")
            if name not in names:
                raise DataError(f"--hf_splits={spec!r}: the dataset has no split {name!r}; its splits: {names}")
            out[part] = name
    else:
        out = {part: next(n for n in aliases if n in names)
               for part, aliases in PART_ALIASES.items() if any(n in names for n in aliases)}
    if "train" not in out:
        raise DataError(f"the dataset has no training split (its splits: {names}); name one with "
                        f"--hf_splits=train=<split>")
    return out


def _columns_of(features, kind: str) -> list[str]:
    return [name for name, feature in features.items() if type(feature).__name__ == kind]


def audio_column(features, chosen: str = "") -> str:
    """The audio column: ``chosen`` or the one ``Audio`` column. Raises DataError listing the columns."""
    found = _columns_of(features, "Audio")
    if chosen and chosen not in features:
        raise DataError(f"--hf_audio_column={chosen}: no such column; the dataset has {list(features)}")
    if chosen:
        return chosen
    if len(found) != 1:
        raise DataError(f"the dataset has {len(found)} Audio columns ({found or 'none'}) among {list(features)}: "
                        "name the audio with --hf_audio_column=COLUMN")
    return found[0]


def label_column(features, chosen: str = "") -> str:
    """The label column: ``chosen`` or the one ``ClassLabel`` column. Raises DataError listing the columns, or
    for a sequence (multi-label) column."""
    found = _columns_of(features, "ClassLabel")
    if chosen and chosen not in features:
        raise DataError(f"--hf_label_column={chosen}: no such column; the dataset has {list(features)}")
    column = chosen or (found[0] if len(found) == 1 else None)
    if column is None:
        raise DataError(f"the dataset has {len(found)} ClassLabel columns ({found or 'none'}) among "
                        f"{list(features)}: name the label with --hf_label_column=COLUMN")
    if type(features[column]).__name__ not in ("ClassLabel", "Value"):
        raise DataError(f"--hf_label_column={column} is a {type(features[column]).__name__} column; one label per "
                        "clip (ClassLabel, string or integer) is needed: multi-label data is not supported yet")
    return column


def class_names(feature, parts) -> list[str]:
    """The class names in id order: a ClassLabel's ``names``, else the sorted distinct values of the column in
    ``parts`` (``[(dataset split, column name)]``; numbers sorted as numbers), as strings."""
    if type(feature).__name__ == "ClassLabel":
        return list(feature.names)
    values = sorted({v for split, column in parts for v in split.unique(column) if v is not None and v != ""})
    return [str(v) for v in values]


def _label_of(value, feature) -> str | None:
    if value is None or value == "" or (type(feature).__name__ == "ClassLabel" and int(value) < 0):
        return None
    return feature.names[int(value)] if type(feature).__name__ == "ClassLabel" else str(value)


def _safe(name: str, limit: int = 80) -> str:
    return re.sub(r"[^\w.-]", "_", name)[-limit:]


def _extension(data: bytes, name: str) -> str:
    """The audio file extension for ``data``: ``name``'s when it is an audio one, else the container soundfile
    finds in the bytes (``.wav``, ``.flac``...), else none."""
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return suffix
    try:
        found = "." + sf.info(io.BytesIO(data)).format.lower()
    except Exception:
        return ""
    return {".mpeg": ".mp3", ".oga": ".ogg"}.get(found, found)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def dataset_key(source: str, config_name: str, dataset, parts: dict, audio: str, label: str) -> str:
    """16 hex digits that change with the source, config, columns, split mapping or any split's fingerprint."""
    origin = str(Path(source).expanduser().resolve()) if is_local(source) else source
    blob = json.dumps([origin, config_name, audio, label, parts,
                       {split: dataset[split]._fingerprint for split in sorted(parts.values())}])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def extract(dataset, parts: dict, audio: str, label: str, root: Path, show_progress: bool = True) -> Path:
    """Write the audio of ``parts`` ({our part: dataset split}) under ``root/<part>/`` and the index
    ``root/audio_dataset.csv`` (``path,label,split``; written last, atomically); returns the index's path.
    Unusable rows (no label, no audio, undecodable, too short) are listed in one warning and left out.
    Raises DataError when no row is usable."""
    from datasets import Audio
    rows, skipped = [], []
    for part, split in parts.items():
        data = dataset[split].cast_column(audio, Audio(decode=False)).select_columns([audio, label])
        feature = data.features[label]
        (root / part).mkdir(parents=True, exist_ok=True)
        bar = progress(total=len(data), desc=f"Extracting {split}", unit="clip", disable=not show_progress,
                       leave=False)
        for i, row in enumerate(data):
            bar.update()
            value, name = row[audio] or {}, f"{split}[{i}]"
            stored = value.get("path") or ""
            if stored:
                name += f" ({stored})"
            target = _label_of(row[label], feature)
            if target is None:
                skipped.append((name, "no label"))
                continue
            if value.get("bytes"):
                file = f"{i:06d}_{_safe(Path(stored).stem or 'audio')}{_extension(value['bytes'], stored)}"
                path = root / part / file
                _write(path, value["bytes"])
            elif stored and os.path.isfile(stored):
                path = Path(stored)
            else:
                skipped.append((name, "no audio bytes and no local file"))
                continue
            reason = probe(path)
            if reason:
                skipped.append((name, reason))
            else:
                rows.append((os.path.relpath(path, root), target, part))
        bar.close()
    if skipped:
        warn_skipped(skipped, "while extracting the Hugging Face dataset")
    if not rows:
        raise DataError(f"no usable audio in the dataset's splits {list(parts.values())} (see the warning above)")
    csv_path = root / INDEX_NAME
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    pd.DataFrame(rows, columns=["path", "label", SPLIT]).to_csv(tmp, index=False, **ENCODING)
    os.replace(tmp, csv_path)
    return csv_path


def hf_index(cfg: dict, is_main: bool = True, barrier=lambda: None, show_progress: bool = True) -> Index:
    """The :class:`~data.index.Index` of ``cfg["hf_dataset"]``: ``path``, ``label`` and the ``split`` column, with
    ``label_names`` in the dataset's order. Rank 0 (``is_main``) loads the dataset (downloading it when needed)
    and extracts its audio when the keyed folder has no index yet (see the module docstring) while the other
    ranks wait at ``barrier``; then they load it from the cache it filled.

    Reads ``hf_dataset``, ``hf_config``, ``hf_audio_column``, ``hf_label_column``, ``hf_splits`` and ``cache_dir``.
    Raises DataError: the dataset cannot be loaded (offline, loading script, not found), a column or split is
    missing or ambiguous, or no row is usable.
    """
    if is_main:
        root, names = _dataset_folder(cfg, show_progress, extract_missing=True)
    barrier()
    if not is_main:
        root, names = _dataset_folder(cfg, False, extract_missing=False)
    index = read_index(root / INDEX_NAME)
    index.label_names = names
    return index


def _dataset_folder(cfg: dict, show_progress: bool, extract_missing: bool) -> tuple[Path, list[str]]:
    """(the dataset's keyed extraction folder, its class names); extracts it when missing and asked to, printing
    what is used."""
    source, config_name = cfg["hf_dataset"], cfg.get("hf_config", "")
    dataset = open_dataset(source, config_name)
    parts = split_map(dataset, cfg.get("hf_splits", ""))
    features = dataset[parts["train"]].features
    audio = audio_column(features, cfg.get("hf_audio_column", ""))
    label = label_column(features, cfg.get("hf_label_column", ""))
    names = class_names(features[label], [(dataset[s], label) for s in parts.values()])
    name = _safe(Path(source.rstrip("/")).name + (f"-{config_name}" if config_name else ""))
    root = (Path(cfg["cache_dir"]) / "hf_datasets" / dataset_key(source, config_name, dataset, parts, audio, label)
            / name).resolve()
    if extract_missing:
        unused = sorted(set(dataset) - set(parts.values()))
        print(f"Hugging Face dataset {source}{f' ({config_name})' if config_name else ''}: "
              + ", ".join(f"{part} = {split} ({len(dataset[split])} rows)" for part, split in parts.items())
              + (f"; not used: {', '.join(unused)}" if unused else "") + f"; audio {audio!r}, label {label!r} "
              f"({len(names)} classes)", flush=True)
        if not (root / INDEX_NAME).is_file():
            extract(dataset, parts, audio, label, root, show_progress)
    return root, names


def default_split(cfg: dict, explicit_keys=()) -> dict:
    """``cfg`` with ``split="predefined"`` when it reads a Hugging Face dataset and the command line chose no
    ``split`` (``explicit_keys``: the keys it set): the dataset's own splits are kept unless asked otherwise."""
    if cfg.get("hf_dataset") and "split" not in explicit_keys:
        return {**cfg, "split": "predefined"}
    return cfg
