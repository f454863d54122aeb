"""Prepare step: decode videos once with PyAV and write a TFDS ArrayRecord dataset.

  python -m ps_jax.data.prepare --dataset {msrvtt,msvd,lsmdc,activitynet,didemo,moving_shapes} \
      --video_dir VIDEOS --anno_dir ANNOTATIONS --out_dir DATA_DIR \
      [--split_protocol 9k|7k] [--max_frames K] [--fps R] [--short_side 224] \
      [--encoding auto|raw|jpeg] [--jpeg_quality 90] [--num_workers N] \
      [--runner local|beam [--beam_options="--runner=DirectRunner ..."]]

Decodes every video of the dataset once (restartable, bad videos skipped and reported in
`DATA_DIR/prepare_report.jsonl`) and writes `DATA_DIR/<dataset>[/<config>]/1.0.0/`
(ArrayRecord): by default every frame, short side 224, one JPEG per frame (moving_shapes:
native size, raw pixels). The two phases, the splits and the files are described in
`ps_jax.data.preparation`, the library this command line calls. `--runner beam` runs
both phases as Apache Beam pipelines (`ps_jax.data.beam_jobs`; `pip install -e
".[beam]"`), on the DirectRunner here or on a cluster runner named in --beam_options.

Layer: front end (the `ps_jax.data` package's command line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from ps_jax.data import annotations as anno_lib
from ps_jax.data import moving_shapes
from ps_jax.data.builders import virtual_splits, write_dataset  # noqa: F401  (old home)
from ps_jax.data.decoding import (MAX_DECODE_ATTEMPTS, VIDEO_EXTENSIONS,  # noqa: F401
                                  index_video_files, run_tasks)
from ps_jax.data.frame_store import DEFAULT_JPEG_QUALITY
from ps_jax.data.preparation import (CACHE_DIR, DATASETS, DEFAULT_HOLDOUT,  # noqa: F401
                                     DEFAULT_SHORT_SIDE, ENCODING_CHOICES, REPORT_FILE,
                                     RUNNERS, SUMMARY_FILE, PrepareError, PrepareSummary,
                                     prepare)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m ps_jax.data.prepare",
      description="Decode videos once and write a TFDS ArrayRecord dataset.")
  p.add_argument("--dataset", required=True, choices=DATASETS)
  p.add_argument("--video_dir", help="directory searched recursively for <video_id>.<ext>")
  p.add_argument("--anno_dir", help="directory with the annotation files")
  p.add_argument("--out_dir", required=True, help="TFDS data_dir to write")
  p.add_argument("--split_protocol", default=None, choices=sorted(anno_lib.MSRVTT_TRAIN_LISTS),
                 help="MSR-VTT training list (default 9k)")
  p.add_argument("--max_frames", "--frames_per_video", type=int, default=None,
                 help="keep K evenly spread frames per video (default: every frame)")
  p.add_argument("--fps", type=float, default=None,
                 help="re-time videos to this frame rate first (default: keep the file's "
                 "frames; the official compress step used 3)")
  p.add_argument("--short_side", type=int, default=None,
                 help=f"stored short side (default {DEFAULT_SHORT_SIDE}; moving_shapes: "
                 "native size)")
  p.add_argument("--encoding", default="auto", choices=ENCODING_CHOICES,
                 help="frame storage (auto: raw for moving_shapes, jpeg otherwise)")
  p.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY,
                 help=f"JPEG quality 1..100 (default {DEFAULT_JPEG_QUALITY})")
  p.add_argument("--num_workers", type=int, default=0,
                 help="decoding processes (runner local)")
  p.add_argument("--runner", default="local", choices=RUNNERS,
                 help="local: this machine's process pool; beam: Apache Beam pipelines")
  p.add_argument("--beam_options", action="append", default=[],
                 help="Beam pipeline arguments, given with '=': --beam_options="
                 "'--runner=DataflowRunner --project=P --region=R --temp_location=gs://...' "
                 "(repeatable; default Beam's DirectRunner)")
  p.add_argument("--holdout_size", type=int, default=None,
                 help=f"validation hold-out of training videos (default {DEFAULT_HOLDOUT})")
  p.add_argument("--holdout_seed", type=int, default=0)
  p.add_argument("--keep_cache", action="store_true")
  p.add_argument("--shapes_size", default="demo", choices=sorted(moving_shapes.SIZES))
  p.add_argument("--seed", type=int, default=0, help="moving_shapes seed")
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv: Iterable[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  short_side = "auto" if args.short_side is None else args.short_side
  try:
    summary = prepare(args.dataset, out_dir=args.out_dir, video_dir=args.video_dir,
                      anno_dir=args.anno_dir, split_protocol=args.split_protocol,
                      max_frames=args.max_frames, short_side=short_side, fps=args.fps,
                      encoding=args.encoding, jpeg_quality=args.jpeg_quality,
                      num_workers=args.num_workers, holdout_size=args.holdout_size,
                      holdout_seed=args.holdout_seed, keep_cache=args.keep_cache,
                      shapes_size=args.shapes_size, seed=args.seed,
                      progress=not args.no_progress, runner=args.runner,
                      beam_options=args.beam_options)
  except PrepareError as e:
    parser.error(str(e))
  print(summary.line())
  for line in summary.protocol_lines():
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
