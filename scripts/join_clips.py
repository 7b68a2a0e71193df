"""Join recordings back to back into one WAV, to see what predict.py --timeline makes of known parts.

    GTZAN=../shared/gtzan-mini/genres_original
    python scripts/join_clips.py mix.wav $GTZAN/classical/classical.00004.wav $GTZAN/reggae/reggae.00002.wav \
        $GTZAN/rock/rock.00003.wav
    python predict.py runs/<experiment> mix.wav --timeline

Every input is decoded, down-mixed to mono and resampled to --sample_rate (default: the first file's rate)
with the project's own loader (data.audio.load_audio), optionally cut to its first --seconds, and the parts
are written one after another as 16-bit PCM. Prints where each part starts and ends, in seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.audio import AudioError, load_audio, sf_path  # noqa: E402
from experiment.checkpoint import write_atomic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the WAV file to write")
    p.add_argument("inputs", nargs="+", help="audio files, joined in this order")
    p.add_argument("--sample_rate", type=int, default=0, help="Hz (default: the first input's)")
    p.add_argument("--seconds", type=float, default=0.0, help="keep the first SECONDS of each input (0: all)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rate = args.sample_rate or sf.info(sf_path(args.inputs[0])).samplerate
        parts = [load_audio(path, rate).numpy() for path in args.inputs]
    except (AudioError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.seconds > 0:
        parts = [x[:int(round(args.seconds * rate))] for x in parts]
    start = 0.0
    for path, x in zip(args.inputs, parts):
        print(f"{start:8.2f}-{start + len(x) / rate:8.2f} s  {path}")
        start += len(x) / rate
    out = Path(args.out)
    write_atomic(out, lambda tmp: sf.write(tmp, np.concatenate(parts), rate, subtype="PCM_16", format="WAV"))
    print(f"{out}: {start:.2f} s at {rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
