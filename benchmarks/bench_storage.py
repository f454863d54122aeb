"""Frame storage benchmark: bytes per video, prepare speed and pipeline speed, raw vs JPEG.

  python benchmarks/bench_storage.py [--seconds 10] [--rate 30] [--width 1280]
      [--height 720] [--copies 4] [--batches 6] [--qualities 90,95]
      [--results benchmarks/RESULTS_storage.md]

No real video exists on the development machine, so the clip is GENERATED here with
PyAV: H.264 (libx264, yuv420p), 1280x720 at 30 fps for 10 s by default, from
natural-image-like content: smooth colour gradients, a multi-scale texture, fresh
sensor-like noise every frame and a slow camera pan (a window sliding over a larger
canvas). Numbers on real footage will differ (JPEG sizes depend on content).

Each row is one storage variant of the prepare step, all at short side 224 (398x224
frames): raw uint8 or one JPEG per frame, keeping 32 evenly spread frames or every
frame. Columns:
  bytes/video   ArrayRecord bytes of `--copies` written records, divided by the copies;
  prepare v/s   videos per second through what a prepare worker runs
                (`decoding.decode_to_cache`: PyAV decode, resize, encode, cache file);
  pipeline f/s  training frames per second out of `pipeline.make_train_loader` (read a
                record, sample F = 6 frames with the official `rand` rule, decode only
                those, bilinear RandomResizedCrop to 224, tokenize), one process, no
                grain workers;
  PSNR dB       of the stored frames against the raw ones (raw: exact).
On a 2-core CPU shared with other work the defaults take a few minutes; timings are
noisy there.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance  # noqa: E402
from ps_jax.data import builders, decoding, frame_store, pipeline, video  # noqa: E402
from ps_jax.tokenizer import WordTokenizer  # noqa: E402


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """float32[h, w] multi-scale texture in about [-1, 1]: upsampled noise octaves."""
  out = np.zeros((h, w), np.float32)
  for cells, weight in ((8, 1.0), (32, 0.5), (128, 0.25), (512, 0.125)):
    small = rng.uniform(-1, 1, (max(2, h * cells // w), cells)).astype(np.float32)
    out += weight * np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC))
  return out / 1.875


def make_clip(path: str, seconds: float, rate: int, width: int, height: int,
              seed: int = 0) -> int:
  """Writes the generated H.264 clip (see the module docstring). Returns its frames."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * rate))
  pan = 4  # pixels per frame
  canvas_w = width + pan * n
  y, x = np.mgrid[0:height, 0:canvas_w].astype(np.float32)
  sky = np.stack([110 + 60 * np.sin(x / 900 + 0.5), 130 + 50 * np.cos(y / 500 + x / 1500),
                  160 + 40 * np.sin(y / 300)], axis=-1)
  texture = _texture(rng, height, canvas_w)[..., None] * np.array([55, 45, 35], np.float32)
  canvas = sky + texture * (y[..., None] / height + 0.3)
  frames = np.empty((n, height, width, 3), np.uint8)
  for t in range(n):
    window = canvas[:, pan * t:pan * t + width]
    noise = rng.integers(-4, 5, size=window.shape, dtype=np.int8)
    frames[t] = np.clip(window + noise, 0, 255).astype(np.uint8)
  video.write_video(path, frames, fps=rate)
  return n


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def run_variant(clip: str, work: str, name: str, max_frames: int | None, encoding: str,
                quality: int, copies: int, batches: int, reference: np.ndarray | None):
  """(bytes per video, prepare videos/s, pipeline frames/s, PSNR, stored frames)."""
  cache = os.path.join(work, f"{name}.npz")
  task = {"video_id": name, "path": clip, "cache_path": cache,
          "frames_per_video": max_frames, "short_side": 224, "threads": 1,
          "encoding": encoding, "jpeg_quality": quality}
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    result = decoding.decode_to_cache(task)
    times.append(time.perf_counter() - t0)
    assert result["status"] == "ok", result
  frames, indices, n = decoding.load_cached(cache)
  stored = (frames if encoding == "raw"
            else frame_store.decode_jpeg(frames, np.arange(len(frames))))
  psnr = _psnr(stored, reference[indices]) if reference is not None else float("inf")

  out = os.path.join(work, name)
  videos = [builders.PlannedVideo(f"{name}{c}", (f"clip {c}",),
                                  lambda: decoding.load_cached(cache)) for c in range(copies)]
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS's "writing ..." lines
    version_dir = builders.write_dataset(out, "synthetic", {"train": videos},
                                         encoding=encoding, jpeg_quality=quality,
                                         progress=False)
  size = sum(os.path.getsize(f)
             for f in glob.glob(os.path.join(version_dir, "*.array_record*")))
  tok = WordTokenizer(["clip"] + [str(c) for c in range(copies)])
  loader = pipeline.make_train_loader(out, "synthetic", "train", tokenizer=tok,
                                      global_batch_size=copies, num_frames=6, num_prompts=6,
                                      image_size=224, max_len=5, seed=0, shard_index=0,
                                      shard_count=1)
  it = iter(loader)
  next(it)  # warm-up: opens the data source
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  pipe = batches * copies * 6 / (time.perf_counter() - t0)
  return size / copies, 1.0 / min(times), pipe, psnr, len(indices)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--rate", type=int, default=30)
  p.add_argument("--width", type=int, default=1280)
  p.add_argument("--height", type=int, default=720)
  p.add_argument("--copies", type=int, default=4, help="records written per variant")
  p.add_argument("--batches", type=int, default=6, help="timed training batches")
  p.add_argument("--qualities", default="90,95", help="JPEG qualities (all-frames rows)")
  p.add_argument("--results", default="",
                 help="also write the table as markdown, with the command, commit, date and "
                 "host, to this file (benchmarks/RESULTS_storage.md is docs/data.md's source)")
  args = p.parse_args()
  made_by = provenance.record("bench_storage.py", sys.argv[1:])
  qualities = [int(q) for q in args.qualities.split(",")]
  with tempfile.TemporaryDirectory(prefix="bench_storage_") as work:
    clip = os.path.join(work, "clip.mp4")
    t0 = time.perf_counter()
    n = make_clip(clip, args.seconds, args.rate, args.width, args.height)
    print(f"generated clip: {n} frames, {args.width}x{args.height} at {args.rate} fps, "
          f"H.264 {os.path.getsize(clip) / 1e6:.1f} MB ({time.perf_counter() - t0:.0f} s)")
    reference = video.decode_video(clip, num_frames=None, short_side=224, threads=1).frames
    q0 = qualities[0]
    variants = [("raw", 32, "raw", q0), (f"jpeg{q0}", 32, "jpeg", q0), ("raw", None, "raw", q0)]
    variants += [(f"jpeg{q}", None, "jpeg", q) for q in qualities]
    print(f"{'storage':<8} {'frames':>6} {'bytes/video':>12} {'prepare v/s':>12} "
          f"{'pipeline f/s':>13} {'PSNR dB':>8}")
    rows = []
    for label, max_frames, encoding, quality in variants:
      name = f"{label}_{max_frames or 'all'}"
      size, prep, pipe, psnr, kept = run_variant(clip, work, name, max_frames, encoding,
                                                 quality, args.copies, args.batches, reference)
      print(f"{label:<8} {kept:>6} {size / 1e6:>10.2f}MB {prep:>12.2f} {pipe:>13.0f} "
            f"{psnr:>8.1f}", flush=True)
      shown = "raw" if encoding == "raw" else f"JPEG q{quality}"
      rows.append(f"| {shown} | {kept} | {size / 1e6:.2f} MB | {prep:.2f} | {pipe:.0f} | "
                  + ("exact" if encoding == "raw" else f"{psnr:.1f}") + " |")
  if args.results:
    write_results(args.results, n, args, rows, made_by)


def write_results(path: str, num_frames: int, args, rows: list[str], made_by: dict) -> None:
  """The table as markdown, with what produced it (`made_by`: a `provenance.record`)."""
  lines = [
      "# Frame storage: raw vs JPEG (benchmarks/bench_storage.py)", "",
      f"`{made_by['command']}`", "",
      f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
      f"with {os.cpu_count()} CPUs ({platform.processor() or platform.platform()}), "
      f"Python {platform.python_version()}. Generated clip: {num_frames} frames, "
      f"{args.width}x{args.height} at {args.rate} fps, H.264; stored at short side 224.",
      provenance.commit_line(made_by),
      "", "| storage | frames | bytes/video | prepare videos/s | pipeline frames/s | PSNR dB |",
      "|---|---:|---:|---:|---:|---:|", *rows, ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
