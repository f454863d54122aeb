"""Prepare throughput (videos/s): the local process pool against Apache Beam's DirectRunner.

All variants prepare the same .mp4 files (moving_shapes clips written at --size px,
--frames frames, libx264) into fresh output directories, with the real-dataset storage
(every frame, JPEG) unless --encoding says otherwise, and must write the same number of
videos. On one machine the Beam rows show Beam's overhead (pipeline set-up, pickling,
the staged results and TFDS's Beam writer), not what a cluster runner gives: there the
decode phase spreads over every worker of the cluster.

  python benchmarks/bench_prepare.py [--videos 64] [--size 224] [--frames 48] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from ps_jax.data import moving_shapes, preparation  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

# key: (description, prepare() arguments)
VARIANTS = {
    "local": ("local, in process", dict(runner="local", num_workers=0)),
    "pool": ("local, 2 worker processes", dict(runner="local", num_workers=2)),
    "beam": ("Beam DirectRunner, in memory, 1 worker",
             dict(runner="beam", beam_options="--runner=DirectRunner --direct_num_workers=1")),
    "beam_mp": ("Beam DirectRunner, 2 worker processes",
                dict(runner="beam", beam_options="--runner=DirectRunner "
                     "--direct_num_workers=2 --direct_running_mode=multi_processing")),
}


def write_videos(root: str, videos: int, size: int, frames: int) -> str:
  """moving_shapes clips as .mp4 files (about 3/4 train, 1/4 test; twins come in pairs,
  so `videos` is even); returns the source dir."""
  num_test = 2 * max(1, videos // 8)
  cfg = dataclasses.replace(moving_shapes.SIZES["tiny"], num_train=videos - num_test,
                            num_val=0, num_test=num_test, num_frames=frames,
                            image_size=size)
  moving_shapes.write_mp4_dataset(root, cfg)
  return root


def run(source: str, out_root: str, key: str, encoding: str) -> dict:
  name, options = VARIANTS[key]
  out = os.path.join(out_root, key)
  start = time.perf_counter()
  summary = preparation.prepare("moving_shapes", out_dir=out,
                                video_dir=os.path.join(source, "videos"), anno_dir=source,
                                encoding=encoding, progress=False, **options)
  seconds = time.perf_counter() - start
  written = sum(summary.written.values())
  shutil.rmtree(out, ignore_errors=True)
  return {"variant": name, "videos": written, "seconds": round(seconds, 2),
          "videos_per_s": round(written / seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", type=int, default=64)
  parser.add_argument("--size", type=int, default=224, help="frame side in pixels")
  parser.add_argument("--frames", type=int, default=48, help="frames per video")
  parser.add_argument("--encoding", default="jpeg", choices=("jpeg", "raw"))
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help="comma list of: " + ", ".join(f"{k} ({d})" for k, (d, _) in
                                                       VARIANTS.items()))
  parser.add_argument("--markdown", action="store_true")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args()
  if args.videos < 4 or args.videos % 2:
    parser.error(f"--videos must be an even number >= 4, got {args.videos}")
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
  root = tempfile.mkdtemp(prefix="bench_prepare_")
  try:
    source = write_videos(os.path.join(root, "src"), args.videos, args.size, args.frames)
    print(f"{args.videos} videos of {args.frames} frames at {args.size}x{args.size} "
          f"(libx264), stored as {args.encoding}; {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}", flush=True)
    rows = []
    for key in names:
      rows.append(run(source, root, key, args.encoding))
      print(f"  {rows[-1]['variant']}: {rows[-1]['videos_per_s']} videos/s "
            f"({rows[-1]['seconds']} s)", flush=True)
    if len({r["videos"] for r in rows}) != 1:
      raise SystemExit(f"the variants wrote different numbers of videos: {rows}")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print()
  if args.markdown:
    print("| prepare runner | videos | seconds | videos/s |\n|---|---:|---:|---:|")
    for r in rows:
      print(f"| {r['variant']} | {r['videos']} | {r['seconds']:.2f} | {r['videos_per_s']} |")
  else:
    for r in rows:
      print(f"{r['variant']:<40} {r['videos']:>6} {r['seconds']:>8.2f} s "
            f"{r['videos_per_s']:>8} videos/s")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"videos": args.videos, "size": args.size, "frames": args.frames,
                 "encoding": args.encoding, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
