"""Write Free Spoken Digit as a Hugging Face dataset in the Hub's parquet layout, with the ``fsdd`` preset's
speaker split as its train/validation/test splits, to check that ``--hf_dataset`` reproduces the folder route.

    python scripts/fsdd_hf_dataset.py ../shared/fsdd .cache/fsdd_hf      # -> .cache/fsdd_hf/data/<split>-*.parquet
    python train.py --preset=fsdd --hf_dataset=.cache/fsdd_hf            # the same run as --preset=fsdd

Features: ``audio`` (``Audio``, the WAV bytes and file name), ``label`` (``ClassLabel`` with names "0".."9", the
folder route's label order), ``speaker``. Rows are written in the order the folder route sorts each part, so
both routes train on the same clips in the same order.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402

from data.index import build_index  # noqa: E402
from data.splits import assign_groups, split_tracks  # noqa: E402
from train import CONFIG, PRESETS  # noqa: E402

SPLITS = {"train": "train", "val": "validation", "test": "test"}


def main(source: str, out: str) -> None:
    cfg = {**CONFIG, **PRESETS["fsdd"]}
    with tempfile.TemporaryDirectory() as tmp:  # the folder route's index, not left beside the parquet files
        index = build_index(Path(source).resolve(), Path(tmp) / "index.csv", show_progress=False)
    df, _ = assign_groups(index.df, cfg["group_pattern"])
    names = sorted(set(df.label))
    features = datasets.Features({"audio": datasets.Audio(decode=False), "label": datasets.ClassLabel(names=names),
                                  "speaker": datasets.Value("string")})
    (Path(out) / "data").mkdir(parents=True, exist_ok=True)
    for part, rows in split_tracks(df, cfg).items():
        table = dict(audio=[{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in rows.path],
                     label=[names.index(label) for label in rows.label], speaker=list(rows.group))
        split = datasets.Dataset.from_dict(table).cast(features)
        split.to_parquet(Path(out) / "data" / f"{SPLITS[part]}-00000-of-00001.parquet")
        print(f"{SPLITS[part]}: {len(split)} clips, speakers {sorted(set(rows.group))}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
