"""Input pipeline benchmark: prepare a synthetic .mp4 dataset, then time training batches.

  python benchmarks/bench_pipeline.py [--clips 32] [--stored_short_side 256]
      [--frames_per_video 16] [--image_size 224] [--num_frames 6] [--batch 8]
      [--batches 12] [--workers 0,1,2]

Renders moving_shapes clips at a 16:9 video size, writes them as H.264 .mp4 files,
runs the prepare step (PyAV decode -> TFDS ArrayRecord; moving_shapes is stored as raw
uint8 frames) in a temporary directory and prints:
  - prepare throughput (videos/s) and the stored size per video, raw vs. .mp4;
  - the cost of reading one stored clip raw vs. the JPEG decode of the same frames
    (flat synthetic shapes; `bench_storage.py` compares the two formats on a realistic
    clip, which is what chose JPEG for real datasets);
  - a table of training-pipeline throughput (frames/s in total and per worker process)
    for each grain worker count.
On a 2-core CPU the defaults take about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from ps_jax.data import builders
from ps_jax.data import moving_shapes
from ps_jax.data import pipeline
from ps_jax.data import preparation
from ps_jax.data import video


def _make_videos(root: str, clips: int, short_side: int, frames: int) -> str:
  """Writes `clips` 16:9 moving_shapes clips as .mp4 plus the annotation file."""
  cfg = dataclasses.replace(moving_shapes.SIZES["demo"], num_train=clips, num_val=0,
                            num_test=0, num_frames=frames, image_size=64)
  width = int(round(short_side * 16 / 9 / 2)) * 2
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  for clip in moving_shapes.iter_clips(cfg, "train"):
    big = np.stack([np.asarray(Image.fromarray(f).resize((width, short_side), Image.BICUBIC))
                    for f in clip.frames])
    video.write_video(os.path.join(root, "videos", clip.video_id + ".mp4"), big, fps=8)
  with open(os.path.join(root, moving_shapes.ANNOTATION_FILE), "w") as f:
    json.dump(moving_shapes.annotations(cfg), f)
  return root


def time_batches(loader, batches: int, warmup: int = 2) -> tuple[float, float]:
  """(seconds for the first `warmup` batches: worker start, first epoch order; seconds
  for the next `batches`) of a fresh iterator over `loader`, closed afterwards."""
  it = iter(loader)
  t0 = time.perf_counter()
  for _ in range(warmup):
    next(it)
  startup = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  return startup, seconds


def _dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _storage_report(src: str, summary, split) -> None:
  n = sum(summary.written.values())
  raw = sum(os.path.getsize(os.path.join(summary.version_dir, f))
            for f in os.listdir(summary.version_dir) if ".array_record" in f)
  mp4 = _dir_size(os.path.join(src, "videos"))
  print(f"stored: {raw / n / 2**20:.2f} MiB/video raw uint8 in ArrayRecord, "
        f"{mp4 / n / 2**20:.3f} MiB/video as .mp4")
  source = split.open_source()
  reps = min(len(source), 16)
  for i in range(reps):  # warm the page cache: time the format, not the disk
    frames = source[i]["frames"]
  t = time.perf_counter()
  for i in range(reps):
    frames = source[i]["frames"]
  raw_ms = (time.perf_counter() - t) / reps * 1e3
  jpegs = []
  for f in frames:
    buf = io.BytesIO()
    Image.fromarray(f).save(buf, format="JPEG", quality=90)
    jpegs.append(buf.getvalue())
  t = time.perf_counter()
  for _ in range(3):
    for j in jpegs:
      np.asarray(Image.open(io.BytesIO(j)).convert("RGB"))
  jpeg_ms = (time.perf_counter() - t) / 3 * 1e3
  print(f"read one stored clip ({frames.shape[0]} frames {frames.shape[1]}x{frames.shape[2]}):"
        f" raw {raw_ms:.2f} ms ({frames.nbytes / 2**20 / raw_ms * 1e3:.0f} MiB/s, TFDS parse "
        f"+ ArrayRecord's zstd); as JPEG q90 it would be "
        f"{sum(map(len, jpegs)) / 2**20:.2f} MiB and need {jpeg_ms:.1f} ms of JPEG decoding "
        f"({jpeg_ms / max(raw_ms, 1e-6):.1f}x the raw read) on top of reading it")
  print("(synthetic clips: flat shapes compress far better than real video, under zstd and "
        "JPEG alike)")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--clips", type=int, default=32)
  p.add_argument("--stored_short_side", type=int, default=256)
  p.add_argument("--frames_per_video", type=int, default=16)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--num_frames", type=int, default=6)
  p.add_argument("--num_prompts", type=int, default=6)
  p.add_argument("--batch", type=int, default=8, help="global batch size")
  p.add_argument("--batches", type=int, default=12, help="timed batches per setting")
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--prepare_workers", type=int, default=2)
  args = p.parse_args()

  with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
    src = _make_videos(os.path.join(tmp, "src"), args.clips, args.stored_short_side,
                       args.frames_per_video)
    out = os.path.join(tmp, "data")
    summary = preparation.prepare("moving_shapes", out_dir=out,
                                  video_dir=os.path.join(src, "videos"), anno_dir=src,
                                  frames_per_video=args.frames_per_video,
                                  short_side=args.stored_short_side,
                                  num_workers=args.prepare_workers, progress=False)
    n = sum(summary.written.values())
    print(f"prepare: {n} videos with {args.prepare_workers} decode workers in "
          f"{summary.seconds:.1f} s ({n / summary.seconds:.1f} videos/s)")
    split = builders.load_split(out, "moving_shapes", "train")
    _storage_report(src, summary, split)

    tok = moving_shapes.make_tokenizer()
    frames_per_batch = args.batch * args.num_frames
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
      loader = pipeline.make_train_loader(
          out, "moving_shapes", "train", tokenizer=tok, global_batch_size=args.batch,
          num_frames=args.num_frames, num_prompts=args.num_prompts,
          image_size=args.image_size, max_len=16, seed=0, worker_count=workers,
          shard_index=0, shard_count=1)
      startup, dt = time_batches(loader, args.batches)
      total = args.batches * frames_per_batch / dt
      rows.append((workers, startup, args.batches / dt, total, total / max(workers, 1)))
    print(f"\ntraining pipeline: batch {args.batch} x {args.num_frames} frames -> "
          f"{args.image_size}px uint8, stored {args.frames_per_video} frames at short side "
          f"{args.stored_short_side}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'warm-up s':>9} | {'batches/s':>9} | {'frames/s':>9} | "
          f"{'frames/s per process':>20}")
    print("-" * 66)
    for workers, startup, bps, total, per in rows:
      print(f"{workers:>7} | {startup:>9.2f} | {bps:>9.2f} | {total:>9.1f} | {per:>20.1f}")
    print("(workers = 0: the training process itself reads; per process = total / workers)")


if __name__ == "__main__":
  main()
