"""Which windows to index ActivityNet Captions with: the ceiling each set of window
scales puts on moment retrieval, from the real annotations (no model, no video).

  python benchmarks/bench_moment_windows.py --results benchmarks/RESULTS_anet_moment_windows.md

For every sentence of the `activitynet/moments` split (default test: val_1.json's 17,500
moments of 4,916 videos, each video's duration from the file) the best temporal IoU any
window of a scale set reaches with its span (`ps_jax.moment_eval.oracle_iou`, windows
laid out by `ps_jax.retrieval.windows.spans_multi` exactly as `--mode index` places
them): the percent at IoU >= 0.3 / 0.5 / 0.7 is the most R@n at that IoU any model can
reach by ranking those windows. Beside it the cost: windows a video and an hour.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance  # pylint: disable=wrong-import-position
from ps_jax import moment_eval  # pylint: disable=wrong-import-position
from ps_jax.data import annotations  # pylint: disable=wrong-import-position
from ps_jax.retrieval import windows  # pylint: disable=wrong-import-position

DEFAULT_SCALES = ("4:2;16:8;32:16;8:4,16:8,32:16,64:32;16:8,32:16,64:32,128:64;"
                  "15:5,30:10,60:20,120:40;12:6,24:12,48:24,96:48,192:96;"
                  "10:5,20:10,40:20,80:40,160:80;8:4,16:8,32:16,64:32,128:64,256:128")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scale_row(videos, text: str) -> dict:
  """The ceiling and cost of one scale set over `videos` (VideoMoments)."""
  scales = windows.parse_scales(text, "--scales")
  grid, targets = [], []
  for v in videos:
    grid += [(v.video_id, s, e) for s, e in windows.spans_multi(v.duration, scales)]
    targets += [(v.video_id, s, e) for s, e in v.spans]
  best = moment_eval.oracle_iou(grid, targets)
  hours = sum(v.duration for v in videos) / 3600
  return {"scales": text, "rows": len(grid), "per video": len(grid) / len(videos),
          "per hour": len(grid) / hours, "mIoU": 100 * float(best.mean()),
          **{f"IoU>={m}": 100 * float((best >= m).mean()) for m in (0.3, 0.5, 0.7)}}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--anno_dir", default=os.path.join(REPO, "..", "shared", "data",
                                                    "activitynet"))
  p.add_argument("--split", default="test", choices=("train", "test"))
  p.add_argument("--scales", default=DEFAULT_SCALES,
                 help="scale sets separated by ';', each 'W:S,W:S' seconds")
  p.add_argument("--max_videos", type=int, default=0, help="> 0: the first N videos only")
  p.add_argument("--results", default="", help="write the markdown results file here")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  record = provenance.record("bench_moment_windows.py", argv)
  start = time.perf_counter()
  splits, _ = annotations.activitynet_moment_splits(args.anno_dir)
  videos = splits[args.split][:args.max_videos or None]
  lengths = np.array([e - s for v in videos for s, e in v.spans])
  durations = np.array([v.duration for v in videos])
  rows = [scale_row(videos, text) for text in args.scales.split(";")]
  lines = [
      "# Windows for ActivityNet Captions moments (benchmarks/bench_moment_windows.py)", "",
      f"`{record['command']}`", "", provenance.commit_line(record), "",
      f"activitynet/moments {args.split}: {len(videos)} videos, {len(lengths)} moments; "
      f"videos {durations.mean():.1f} s on average ({durations.sum() / 3600:.1f} h in "
      f"all); moments {np.median(lengths):.1f} s median, {np.percentile(lengths, 10):.1f} "
      f"to {np.percentile(lengths, 90):.1f} s (10th to 90th percentile), "
      f"{lengths.mean():.1f} s mean. Ceiling: percent of moments whose best window of "
      "the set reaches the IoU (no ranking can do better with those windows); mIoU: the "
      f"mean best IoU. {time.perf_counter() - start:.1f} s.", "",
      "| scales (W:S s) | windows | per video | per hour | IoU>=0.3 | IoU>=0.5 | "
      "IoU>=0.7 | mIoU |",
      "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['scales']} | {r['rows']:,} | {r['per video']:.1f} | "
                 f"{r['per hour']:,.0f} | {r['IoU>=0.3']:.1f} | {r['IoU>=0.5']:.1f} | "
                 f"{r['IoU>=0.7']:.1f} | {r['mIoU']:.1f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.results:
    with open(args.results, "w", encoding="utf-8") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
