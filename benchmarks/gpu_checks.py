"""The checks only a GPU can make, as one prepared run for a session that is lent the device machine.

Issue 3 asks for gsplat as the rasterizer, the parity of a c3dgs render between the torch and CUDA
paths, and a side-by-side against gsplat's own ``PngCompression`` on our trained 3dgs scene; issue 5 for
the image codec's file-to-pixels time on a GPU. Stages (``--stages``; each fails on its own, is timed, and
is skipped once ``--budget-s`` is spent):

- ``env``: versions, the GPU, and the first gsplat rasterization (its CUDA code compiles on first use);
- ``parity``: the suite's GPU tests (gsplat parity of forward and gradients, the image Triton kernel),
  then a c3dgs file decoded on the GPU and rendered with both backends on the capture's test views;
- ``image``: file-to-pixels time of image ``.scz`` files (read, unpack, render with the Triton kernel,
  8-bit pixels on the host), best and median of ``--repeats`` after two warm-up decodes; the torch
  renderer on the GPU beside it, and the pixels checked against the CPU decode;
- ``png``: 3dgs trained with gsplat on ``--png-scene``, then gsplat's ``PngCompression`` (``use_sort=False``:
  PLAS is not on PyPI) and ``scenezip compress --data`` applied to that same run; size and PSNR of both
  decoded, evaluated with the same renderer.

Prepare here (network), once per checkout::

    bash benchmarks/gpu_prepare.sh    # wheels into .whl/, capture, c3dgs file and image files into .gpu/

then one device call, ``carry`` = ``[".whl", ".gpu"]``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-index --no-deps \
        --no-build-isolation . && python3 benchmarks/gpu_checks.py --out $OUT

Writes ``gpu_checks.json`` and ``gpu_checks.md`` to ``--out``; copy the figures, with the date, device and
command, into ``benchmarks/RESULTS.md``. ``--stages`` accepts any subset; on a machine without CUDA every
stage but ``env`` reports itself skipped (that is how this script is checked on CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / ".gpu"
STAGES = ("env", "parity", "image", "png")
# --cpu-dry-run: run the stages' code on the CPU with the torch paths in place of gsplat / Triton, to check the
# script itself where there is no GPU; its figures mean nothing
DEV, GS, TRITON = "cuda", "cuda", "triton"


def _no_gpu() -> dict[str, Any] | None:
    return None if DEV == "cpu" or torch.cuda.is_available() else {"skipped": "no CUDA GPU"}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage_env(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}  # fmt: skip
    for name in ("gsplat", "triton", "torchpq", "cupy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - report whatever stops the import
            out[name] = f"unavailable ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return out
    out["gpu"] = torch.cuda.get_device_name()
    from scenezip.render.rasterization import rasterization

    g = torch.Generator().manual_seed(0)
    n = 64
    means = (torch.rand(n, 3, generator=g) - 0.5).cuda()
    quats, scales = torch.randn(n, 4, generator=g).cuda(), (torch.rand(n, 3, generator=g) * 0.05 + 0.02).cuda()
    opac, rgb = torch.full((n,), 0.8).cuda(), torch.rand(n, 3, generator=g).cuda()
    viewmat = torch.eye(4)[None].cuda()
    viewmat[0, 2, 3] = 3.0
    K = torch.tensor([[[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]]]).cuda()
    t0 = time.perf_counter()
    rasterization(means, quats, scales, opac, rgb, viewmat, K, 32, 32, backend="cuda")
    _sync()
    out["gsplat_first_call_s"] = time.perf_counter() - t0  # includes the JIT compile of gsplat's kernels
    return out


def _capture(path: Path, downscale: int):
    from scenezip.scenes.loader import load_dataset

    return load_dataset(path, downscale=downscale, n_random_points=2)


def _background(ds) -> tuple[float, float, float]:
    return tuple(float(c) for c in ds.background) if ds.background is not None else (0.0, 0.0, 0.0)


def stage_parity(args: argparse.Namespace) -> dict[str, Any]:
    if skip := _no_gpu():
        return skip
    out: dict[str, Any] = {}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "300",
           "tests/render/test_render_rasterization.py", "tests/render/test_render_rasterization_2dgs.py",
           "tests/render/test_render_rasterization_2dgs_backward.py",
           "tests/render/test_render_rasterization_image_triton.py", "tests/splatting/test_splatting_gaussians.py",
           "-k", "Gsplat or gsplat or cuda or gpu or Triton or triton"]  # fmt: skip
    t0 = time.perf_counter()
    if DEV == "cpu":
        cmd[cmd.index("-k") + 1] = "test_cuda_backend_needs_cuda_tensors"  # one quick test: the call works
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.pytest_timeout_s)
    lines = (res.stdout + res.stderr).strip().splitlines()
    out["pytest"] = {"returncode": res.returncode, "summary": lines[-1] if lines else "",
                     "seconds": time.perf_counter() - t0,
                     "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20]}  # fmt: skip
    # a decoded c3dgs file rendered by both backends on the capture's test views
    from scenezip.render.metrics import psnr
    from scenezip.scene import load_scene

    ds = _capture(args.parity_data, args.parity_downscale)
    scene = load_scene(args.parity_file, device=DEV)
    bg = torch.tensor(_background(ds), dtype=torch.float32, device=DEV)[None]
    diffs, p_torch, p_cuda, p_between = [], [], [], []
    for i in ds.indices("test").tolist():
        cam = ds.cameras[int(i)].to(DEV)
        w, h = int(cam.widths[0]), int(cam.heights[0])
        a, _ = scene.render(cam.viewmats, cam.Ks, w, h, backgrounds=bg, backend="torch")
        b, _ = scene.render(cam.viewmats, cam.Ks, w, h, backgrounds=bg, backend=GS)
        ref = ds.image(int(i)).to(DEV)
        diffs.append(float((a - b).abs().max()))
        p_torch.append(float(psnr(a[0], ref)))
        p_cuda.append(float(psnr(b[0], ref)))
        p_between.append(float(psnr(a[0], b[0])))
    out["c3dgs_file"] = {"file": str(args.parity_file), "views": len(diffs), "max_abs_diff": max(diffs),
                         "psnr_torch": float(np.mean(p_torch)), "psnr_cuda": float(np.mean(p_cuda)),
                         "psnr_torch_vs_cuda_min": min(p_between)}  # fmt: skip
    return out


def stage_image(args: argparse.Namespace) -> dict[str, Any]:
    if skip := _no_gpu():
        return skip
    from scenezip.splatting.image_codec import decode_image, read_code

    files = sorted(args.image_dir.glob("*.scz"))
    if not files:
        return {"skipped": f"no .scz files in {args.image_dir}"}
    rows = []
    for f in files:
        code = read_code(f)
        row: dict[str, Any] = {"file": f.name, "size": f"{code.width}x{code.height}", "gaussians": code.n,
                               "bytes": f.stat().st_size}  # fmt: skip
        ref = decode_image(f)  # the CPU decode, torch renderer
        for name, backend in (("triton", TRITON), ("torch", "torch")):
            for _ in range(2):
                decode_image(f, device=DEV, backend=backend)
            times = []
            for _ in range(args.repeats):
                _sync()
                t0 = time.perf_counter()
                pix = decode_image(f, device=DEV, backend=backend)  # returns host uint8: synchronized
                times.append(time.perf_counter() - t0)
            row[f"{name}_ms_best"] = 1e3 * min(times)
            row[f"{name}_ms_median"] = 1e3 * float(np.median(times))
            diff = np.abs(pix.astype(np.int16) - ref.astype(np.int16))
            row[f"{name}_vs_cpu_max_diff"] = int(diff.max())
            row[f"{name}_vs_cpu_pixels_differing"] = float((diff > 0).mean())
        rows.append(row)
    return {"rows": rows, "repeats": args.repeats}


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def stage_png(args: argparse.Namespace) -> dict[str, Any]:
    if skip := _no_gpu():
        return skip
    from scenezip.cli_compress import CompressArgs, compress_scene
    from scenezip.scene import load_scene
    from scenezip.splatting.config import DensifyConfig, TrainConfig
    from scenezip.splatting.gaussians import GaussianModel
    from scenezip.splatting.streams import gaussians_to_streams
    from scenezip.splatting.trainer import evaluate, train
    from scenezip.scenes.scz import write_scz

    ds = _capture(args.png_data, args.png_downscale)
    work = Path(tempfile.mkdtemp(prefix="gpu_png_"))
    cfg = TrainConfig(data=args.png_data, out=work / "3dgs", steps=args.png_steps, downscale=args.png_downscale,
                      backend=GS, progress=False, checkpoint_every=0, keep_checkpoints=1,
                      densify=DensifyConfig(max_gaussians=args.png_max_gaussians))  # fmt: skip
    t0 = time.perf_counter()
    run = train(cfg, dataset=ds)
    out: dict[str, Any] = {"scene": str(args.png_data),
                           "resolution": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])],
                           "steps": args.png_steps, "train_s": time.perf_counter() - t0}  # fmt: skip
    kw = dict(background=_background(ds), backend=GS)
    model = run.model
    meta, streams = gaussians_to_streams(model)
    raw = write_scz(work / "3dgs.scz", "3dgs", meta, streams)
    out["3dgs"] = {"bytes": raw, "gaussians": len(model), "psnr": evaluate(model, ds, "test", **kw)["psnr"]}
    # gsplat's PngCompression on the same Gaussians
    try:
        from gsplat.compression import PngCompression

        png_dir = work / "png"
        png_dir.mkdir()
        splats = {k: v.detach().clone() for k, v in model.splats.items()}
        t0 = time.perf_counter()
        PngCompression(use_sort=False, verbose=False).compress(str(png_dir), splats)
        dec = PngCompression(use_sort=False, verbose=False).decompress(str(png_dir))
        png_model = GaussianModel(*(dec[k].float() for k in ("means", "quats", "scales", "opacities", "sh0", "shN")))
        png_model = png_model.to(DEV)
        out["png"] = {"bytes": _dir_bytes(png_dir), "gaussians": len(png_model), "seconds": time.perf_counter() - t0,
                      "psnr": evaluate(png_model, ds, "test", **kw)["psnr"], "use_sort": False}  # fmt: skip
    except Exception as e:  # noqa: BLE001 - PngCompression's dependencies (torchpq, cupy) may fail here
        out["png"] = {"error": f"{type(e).__name__}: {e}"}
    # ours: scenezip compress --data on the same run
    t0 = time.perf_counter()
    rep = compress_scene(CompressArgs(source=run.out_dir, out=work / "c3dgs.scz", data=args.png_data,
                                      downscale=args.png_downscale, backend=GS, progress=False,
                                      distill_steps=args.png_distill_steps))  # fmt: skip
    ours = load_scene(work / "c3dgs.scz", device=DEV).model
    out["scenezip"] = {"bytes": rep["size_bytes"], "gaussians": rep["n_gaussians"], "seconds": time.perf_counter() - t0,
                       "psnr": evaluate(ours, ds, "test", **kw)["psnr"]}  # fmt: skip
    return out


def markdown(res: dict[str, Any]) -> str:
    md = [f"# gpu_checks ({res['date']})", "", f"Device: {res['stages'].get('env', {}).get('gpu', 'no GPU')}; "
          f"command: `{res['command']}`", ""]  # fmt: skip
    for name, r in res["stages"].items():
        md += [f"## {name} ({r.get('seconds', 0):.0f} s)", "", "```", json.dumps(r, indent=2), "```", ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_checks.json and .md")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip the stages that start after this many seconds")
    ap.add_argument("--pytest-timeout-s", type=float, default=240.0)
    ap.add_argument("--parity-data", type=Path, default=PREPARED / "bird", help="capture of --parity-file")
    ap.add_argument("--parity-downscale", type=int, default=8)
    ap.add_argument("--parity-file", type=Path, default=PREPARED / "bird_c3dgs.scz",
                    help="a c3dgs .scz of that capture")
    ap.add_argument("--image-dir", type=Path, default=PREPARED / "images", help="image .scz files to time")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--png-data", type=Path, default=PREPARED / "bird")
    ap.add_argument("--png-downscale", type=int, default=2)
    ap.add_argument("--png-steps", type=int, default=7000)
    ap.add_argument("--png-max-gaussians", type=int, default=300_000)
    ap.add_argument("--png-distill-steps", type=int, default=1000, help="scenezip compress --distill-steps")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every stage on the CPU with the torch paths (checks this script; its figures mean "
                    "nothing)")
    args = ap.parse_args(argv)
    global DEV, GS, TRITON
    if args.cpu_dry_run:
        DEV, GS, TRITON = "cpu", "torch", "torch"
    args.out.mkdir(parents=True, exist_ok=True)
    fns: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "env": stage_env, "parity": stage_parity, "image": stage_image, "png": stage_png}  # fmt: skip
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "command": "python3 benchmarks/gpu_checks.py "
                           + " ".join(sys.argv[1:] if argv is None else argv), "stages": {}}  # fmt: skip
    start = time.perf_counter()
    for name in [s for s in STAGES if s in args.stages]:
        if time.perf_counter() - start > args.budget_s:
            res["stages"][name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
            continue
        t0 = time.perf_counter()
        try:
            r = fns[name](args)
        except Exception as e:  # noqa: BLE001 - one stage failing must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        r["seconds"] = time.perf_counter() - t0
        res["stages"][name] = r
        print(f"== {name}: {json.dumps(r)[:2000]}", flush=True)
        (args.out / "gpu_checks.json").write_text(json.dumps(res, indent=2) + "\n")  # after every stage
    (args.out / "gpu_checks.md").write_text(markdown(res))
    return res


if __name__ == "__main__":
    main()
