"""Fuzz the .scz reader: thousands of seeded corruptions of a real small file, counted by outcome.

Every corrupted file must either decode or raise SceneFileError; any other exception is a bug and
is listed with the case number that reproduces it. Also records the slowest case and the largest
Python-side allocation peak of any case (tracemalloc; numpy buffers included).

    python3 benchmarks/fuzz_scz.py --cases 5000 --seed 0

Writes benchmarks/results/fuzz_scz.json and benchmarks/results/fuzz_scz.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np

from scenezip.errors import SceneFileError
from scenezip.quant.codecs import quantize_uniform
from scenezip.quant.morton import morton_order
from scenezip.scenes.scz import decode_streams, parse_scz, write_scz

KINDS = ("bit-flips", "insert", "delete", "truncate", "header-digit", "header-byte")


def make_scene(n: int, seed: int) -> bytes:
    """A small scene with every codec: Morton-ordered positions, float and integer attributes."""
    rng = np.random.default_rng(seed)
    q = quantize_uniform(rng.random((n, 3)), 0.0, 1.0, 14).astype(np.int32)
    q = q[morton_order(q)]
    streams = {
        "means_q": (q, "rans-delta"),
        "quats": (rng.standard_normal((n, 4)).astype(np.float16), "raw"),
        "opacities": (rng.integers(0, 64, n).astype(np.uint8), "rans"),
        "sh0": (rng.standard_normal((n, 3)).astype(np.float32), "zlib"),
        "codes": (rng.integers(0, 4096, (n, 2)).astype(np.int32), "rans"),
        "mask": (rng.random(n) > 0.1, "rans"),
    }
    meta = {"sh_degree": 0, "bounds": [[0.0] * 3, [1.0] * 3], "image_size": [64, 48], "camera_model": "PINHOLE"}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scene.scz"
        write_scz(path, "c3dgs", meta, streams)
        return path.read_bytes()


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    hlen = struct.unpack_from("<I", data, 12)[0]
    head_end = min(16 + hlen, len(buf))

    def where() -> int:  # most corruptions hit the preamble and header, where the parsing is
        return int(rng.integers(0, head_end if rng.random() < 0.8 else len(buf)))

    if kind == "bit-flips":
        for _ in range(int(rng.integers(1, 5))):
            buf[where()] ^= 1 << int(rng.integers(0, 8))
    elif kind == "insert":
        pos = where()
        buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8).tobytes()
    elif kind == "delete":
        pos = where()
        del buf[pos : pos + int(rng.integers(1, 17))]
    elif kind == "truncate":
        del buf[int(rng.integers(0, len(buf))) :]
    elif kind == "header-digit":  # numbers in the header: shapes, offsets, sizes, CRCs, params
        digits = [i for i in range(16, head_end) if 48 <= buf[i] <= 57]
        for _ in range(int(rng.integers(1, 3))):
            i = digits[int(rng.integers(0, len(digits)))]
            buf[i] = int(rng.integers(48, 58))
        if rng.random() < 0.3:  # and sometimes a much longer number
            i = digits[int(rng.integers(0, len(digits)))]
            buf[i:i] = b"9" * int(rng.integers(1, 14))
    else:  # header-byte: any byte of the header replaced by a printable character
        buf[int(rng.integers(16, head_end))] = int(rng.integers(32, 127))
    return bytes(buf)


def category(message: str) -> str:
    """The message with the file name, numbers, names and hex stripped, for counting."""
    m = message.split(": ", 1)[1] if ": " in message else message
    m = re.sub(r"'[^']*'", "'…'", m)
    m = re.sub(r"b'…'|b\"[^\"]*\"", "b'…'", m)
    m = re.sub(r"\([^()]*\)$", "(…)", m)
    m = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{8}\b", "H", m)
    m = re.sub(r"-?\d+", "N", m)
    return m[:110]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000, help="number of corrupted files to try")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    ap.add_argument("--points", type=int, default=256, help="Gaussians in the scene that is corrupted")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    data = make_scene(args.points, seed=7)
    decode_streams(parse_scz(data))  # the clean file must decode
    rng = np.random.default_rng(args.seed)
    outcomes: Counter = Counter()
    messages: Counter = Counter()
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    unexpected: list[dict] = []
    slowest, peak_max = 0.0, 0
    tracemalloc.start()
    t_start = time.perf_counter()
    for case in range(args.cases):
        kind = KINDS[case % len(KINDS)]
        bad = mutate(data, kind, rng)
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        try:
            decode_streams(parse_scz(bad, "fuzz.scz"))
            outcome = "decoded"
        except SceneFileError as e:
            outcome = "SceneFileError"
            messages[category(str(e))] += 1
        except Exception as e:  # noqa: BLE001 - the point of the fuzzer is to find these
            outcome = "unexpected"
            unexpected.append({"case": case, "kind": kind, "type": type(e).__name__, "message": str(e)[:300]})
        slowest = max(slowest, time.perf_counter() - t0)
        peak_max = max(peak_max, tracemalloc.get_traced_memory()[1])
        outcomes[outcome] += 1
        by_kind[kind][outcome] += 1
    total_s = time.perf_counter() - t_start
    tracemalloc.stop()

    result = {
        "protocol": {
            "cases": args.cases,
            "seed": args.seed,
            "file_bytes": len(data),
            "points": args.points,
            "kinds": list(KINDS),
            "note": "80% of positional corruptions hit the preamble+header; payload corruption is caught by CRC32",
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "outcomes": dict(outcomes),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "rows": [{"message": m, "count": c} for m, c in messages.most_common()],
        "unexpected": unexpected,
        "slowest_case_s": round(slowest, 4),
        "total_s": round(total_s, 2),
        "peak_traced_bytes": peak_max,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz_scz.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    lines = [
        "# .scz reader fuzzing",
        "",
        f"Command: `python3 benchmarks/fuzz_scz.py --cases {args.cases} --seed {args.seed} --points {args.points}`",
        "",
        f"{args.cases} corruptions of a {len(data):,}-byte file: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        + f". Slowest case {slowest * 1e3:.1f} ms, total {total_s:.1f} s, "
        f"largest traced allocation peak {peak_max / 2**20:.2f} MiB.",
        "",
        "| corruption | decoded | SceneFileError | unexpected |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {v['decoded']} | {v['SceneFileError']} | {v['unexpected']} |" for k, v in by_kind.items()),
        "",
        "| error message (numbers and names stripped) | count |",
        "|---|---:|",
        *(f"| {m.replace('|', '/')} | {c} |" for m, c in messages.most_common()),
        "",
    ]
    if unexpected:
        lines += ["## Unexpected exceptions", ""]
        lines += [f"- case {u['case']} ({u['kind']}): {u['type']}: {u['message']}" for u in unexpected] + [""]
    (args.out / "fuzz_scz.md").write_text("\n".join(lines))
    print("\n".join(lines[:5]))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
