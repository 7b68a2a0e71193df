"""Multi-label spoken digits from real recordings: 2-3 FSDD digits overlaid at random offsets and levels.

    python scripts/fsdd_mixtures.py                              # -> .cache/fsdd_mixtures/{audio/,mixtures.csv,loudest.csv}
    python scripts/fsdd_mixtures.py --train=1500 --val=300 --test=300 --seconds=1.0 --seed=0

The speakers are split as the ``fsdd`` preset of train.py splits them (``split=stratified`` with
``group_pattern`` on the speaker, ``split_seed`` 42, through data.splits itself): three speakers for training,
one for val (lucas) and one for test (jackson). A mixture only uses recordings of its own part's speakers, so
the test mixtures hold only the test speaker's voice: the model is scored on a speaker it never heard.

A mixture is ``--seconds`` long (8 kHz, FSDD's rate) and holds 2 or 3 (``--min_digits``..``--max_digits``,
uniform) different digits, each a different recording. In the training part the digits come from different
speakers (there are three); val and test have one speaker each, so there they are different recordings of it.
Each recording is scaled to an RMS of -20 dBFS, then by a gain drawn uniformly in [-``--level_db``, 0] dB, and
placed at a uniform random offset (a recording longer than the mixture is cut to it at a random start); the sum
is scaled down as a whole when its peak exceeds 0.9, which keeps the relative levels.

Written (nothing outside ``--out``): ``audio/<part>/<part>_<n>.wav``; ``mixtures.csv`` (``path,label,split``,
the label cell the digits present joined with ';', sorted: a multi-label index for ``--split=predefined``); and
``loudest.csv`` (same clips, label = the loudest digit: what a single-label data set would record for them,
for the single-label baseline); ``mixtures.json`` records the settings and each clip's digits, speakers,
recordings, gains (dB) and offsets (s). The same arguments write the same files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.audio import load_audio  # noqa: E402
from data.splits import assign_groups, make_splits  # noqa: E402
from experiment.checkpoint import write_atomic  # noqa: E402

SAMPLE_RATE = 8000  # FSDD's rate
TARGET_RMS_DB = -20.0  # every recording's level before its random gain, dBFS
PEAK = 0.9  # the largest mixture peak kept (higher: the whole mixture scaled down)
FSDD_GROUPS = r"_([a-z]+)_\d+\.wav$"  # train.py's fsdd preset: <digit>_<speaker>_<n>.wav -> speaker


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/fsdd_mixtures.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fsdd", default=str(ROOT.parent / "shared" / "fsdd"), help="FSDD folder (<digit>/*.wav)")
    p.add_argument("--out", default=str(ROOT / ".cache" / "fsdd_mixtures"), help="output folder")
    p.add_argument("--train", type=int, default=1500, help="training mixtures (default 1500)")
    p.add_argument("--val", type=int, default=300, help="val mixtures (default 300)")
    p.add_argument("--test", type=int, default=300, help="test mixtures (default 300)")
    p.add_argument("--seconds", type=float, default=1.0, help="mixture length, seconds (default 1.0, the fsdd preset's window)")
    p.add_argument("--min_digits", type=int, default=2, help="fewest digits per mixture (default 2)")
    p.add_argument("--max_digits", type=int, default=3, help="most digits per mixture (default 3)")
    p.add_argument("--level_db", type=float, default=10.0, help="gains drawn in [-level_db, 0] dB (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    if not 1 <= args.min_digits <= args.max_digits <= 10:
        p.error("need 1 <= --min_digits <= --max_digits <= 10")
    return args


def speaker_parts(fsdd: Path) -> dict[str, pd.DataFrame]:
    """FSDD's recordings split by speaker as the fsdd preset splits them: {part: DataFrame(path, label, group)}."""
    paths = sorted(str(p) for p in fsdd.glob("*/*.wav"))
    if not paths:
        raise SystemExit(f"error: no FSDD recordings (<digit>/<digit>_<speaker>_<n>.wav) under {fsdd}")
    df = pd.DataFrame({"path": paths, "label": [Path(p).name.split("_")[0] for p in paths]}, dtype=object)
    df, _ = assign_groups(df, FSDD_GROUPS)
    return make_splits(df, "stratified", val_size=0.2, test_size=0.1, split_seed=42)


def place(wave: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``wave`` at a uniform random offset in a silent [length] canvas (cut at a random start when longer);
    returns (canvas, offset in seconds; negative when the recording was cut)."""
    canvas = np.zeros(length, dtype=np.float64)
    if len(wave) >= length:
        start = int(rng.integers(0, len(wave) - length + 1))
        canvas[:] = wave[start:start + length]
        return canvas, -start / SAMPLE_RATE
    offset = int(rng.integers(0, length - len(wave) + 1))
    canvas[offset:offset + len(wave)] = wave
    return canvas, offset / SAMPLE_RATE


def mixture(part: pd.DataFrame, train: bool, args, rng: np.random.Generator, cache: dict) -> tuple[np.ndarray, dict]:
    """One mixture of ``part``'s recordings: (waveform float32 [seconds * 8000], its record)."""
    count = int(rng.integers(args.min_digits, args.max_digits + 1))
    digits = rng.choice(sorted(part.label.unique()), size=count, replace=False)
    speakers = sorted(part.group.unique())
    voices = rng.choice(speakers, size=count, replace=False) if train and len(speakers) >= count else \
        rng.choice(speakers, size=count)
    length = int(round(args.seconds * SAMPLE_RATE))
    total, parts = np.zeros(length), []
    for digit, speaker in zip(digits, voices):
        pool = part[(part.label == digit) & (part.group == speaker)].path.tolist()
        path = pool[int(rng.integers(len(pool)))]
        if path not in cache:
            cache[path] = load_audio(path, SAMPLE_RATE).numpy().astype(np.float64)
        wave = cache[path]
        gain_db = float(rng.uniform(-args.level_db, 0.0))
        scale = 10 ** ((TARGET_RMS_DB + gain_db) / 20) / max(np.sqrt(np.mean(wave ** 2)), 1e-8)
        canvas, offset = place(wave * scale, length, rng)
        total += canvas
        parts.append(dict(digit=str(digit), speaker=str(speaker), recording=Path(path).name, gain_db=gain_db,
                          offset_seconds=offset, rms=float(np.sqrt(np.mean(canvas ** 2)))))
    peak = np.abs(total).max()
    if peak > PEAK:
        total *= PEAK / peak
    return total.astype(np.float32), dict(digits=parts)


def main(argv: list[str] | None = None) -> Path:
    """Write the mixtures; returns the output folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    parts = speaker_parts(Path(args.fsdd))
    rng, cache, rows, records = np.random.default_rng(args.seed), {}, [], {}
    for name, count in (("train", args.train), ("val", args.val), ("test", args.test)):
        folder = out / "audio" / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            wave, record = mixture(parts[name], name == "train", args, rng, cache)
            path = folder / f"{name}_{n:04d}.wav"
            sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
            digits = sorted({d["digit"] for d in record["digits"]})
            loudest = max(record["digits"], key=lambda d: d["rms"])["digit"]
            rows.append(dict(path=str(path.relative_to(out)), label=";".join(digits), split=name, loudest=loudest))
            records[str(path.relative_to(out))] = record
        print(f"{name}: {count} mixtures of speakers {', '.join(sorted(parts[name].group.unique()))}")
    table = pd.DataFrame(rows)
    for csv, label in (("mixtures.csv", "label"), ("loudest.csv", "loudest")):
        frame = table[["path", label, "split"]].rename(columns={label: "label"})
        write_atomic(out / csv, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    settings = {k: v for k, v in vars(args).items()}
    write_atomic(out / "mixtures.json", lambda tmp: tmp.write_text(json.dumps(
        dict(settings=settings, speakers={k: sorted(v.group.unique()) for k, v in parts.items()}, clips=records),
        indent=1)))
    print(f"{len(table)} mixtures in {out}: mixtures.csv (multi-label), loudest.csv (single-label, the loudest digit)")
    return out


if __name__ == "__main__":
    main()
