"""Offline video index: embed every video once, on all devices and hosts, and write an index.

  python -m ps_jax.index_videos --model PATH --dataset_dir D --dataset NAME --split S \
      --out INDEX [--append]
  python -m ps_jax.index_videos --model PATH --video_dir DIR --out INDEX [--watch]
  python -m ps_jax.main --config C --workdir W --mode index   (the workdir's model)

`--model` is anything `ps_jax.load_model` reads: a ps_jax training workdir (its selected
checkpoint: best validation t2v R@1, else the latest), a Hugging Face CLIP directory or
an official `.pth`.
Videos come from a prepared dataset split (`ps_jax.data.prepare`; frames already
decoded) or from raw files under `--video_dir` (decoded with PyAV, `--frames_per_video`
evenly spread frames resized to `--short_side`, as the prepare step does; the id of a
video is its file stem). Either way each video is processed like evaluation does it:
`uniform` chunked sampling of F = C * P frames, bicubic short-side resize and centre
crop to the model's image size, CLIP normalisation, then `encode_video`.

Every process decodes its slice of each global batch (threads), the batch is encoded
on the whole (data, fsdp) mesh, and process 0 writes the index (`ps_jax.retrieval.store`): ids,
L2-normalised embeddings (float16 by default), the model fingerprint and the metadata
that `ps_jax.search` needs to embed text queries later (model path, tokenizer, caption
length, frames, image size), plus what `ps_jax.serve`'s page shows: a JPEG strip of 4
of the frames each video was embedded from, and its source file (`--video_dir`). A video that cannot be decoded is skipped and reported
(stderr and `INDEX/index_report.jsonl`); it never stops the run. `--append` adds the
videos whose id is not in the index yet (re-run it when new files arrive) and refuses
a model other than the one that built the index.

With `--video_dir` (and no `--append`) the same command creates the index, continues
one that was interrupted, and brings it up to date (`ps_jax.retrieval.folder`): new and
changed files (path, size, mtime) are embedded, rows of removed or changed files are
dropped, files that could not be decoded are retried only once they change. It
commits every `--commit_every` videos or `--commit_seconds` seconds, so a kill loses at
most that much; `--watch` keeps it in step with the folder until interrupted. On several hosts run the same command
on every host (`jax.distributed.initialize()` as in `ps_jax.main`); every process reads
the source, and with --append the index, so both must be on a shared filesystem.

Layer: front end (imports the library `ps_jax.retrieval`: sources, build, model).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ps_jax import distributed, reporting
from ps_jax.retrieval import store
from ps_jax.retrieval.build import build_index
from ps_jax.retrieval.folder import (DEFAULT_COMMIT_EVERY, DEFAULT_COMMIT_SECONDS,
                                     DEFAULT_WATCH_SECONDS, model_load_kwargs, sync_video_dir,
                                     watch_video_dir)
from ps_jax.retrieval.model import IndexModel, ModelLoadError
from ps_jax.retrieval.sources import (DEFAULT_FRAMES_PER_VIDEO, DEFAULT_SHORT_SIDE,
                                      IndexBuildError, dataset_source, video_dir_source)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ps_jax.index_videos",
                              description=__doc__.splitlines()[0])
  p.add_argument("--model", help="ps_jax workdir, HF CLIP directory or official .pth "
                 "(default with --append: the index's model)")
  p.add_argument("--out", required=True, help="index directory")
  p.add_argument("--append", action="store_true",
                 help="add the videos not yet in --out (same model required)")
  p.add_argument("--overwrite", action="store_true", help="replace an index at --out")
  src = p.add_argument_group("videos: a prepared dataset split, or raw files")
  src.add_argument("--dataset_dir", help="the prepare step's --out_dir")
  src.add_argument("--dataset", help="prepared dataset name, e.g. msrvtt/9k, "
                   "moving_shapes/demo")
  src.add_argument("--split", default="test", help="split of --dataset (default test)")
  src.add_argument("--video_dir", help="directory of video files (recursive; id = stem)")
  src.add_argument("--frames_per_video", type=int, default=DEFAULT_FRAMES_PER_VIDEO,
                   help="--video_dir: frames decoded per video (evenly spread)")
  src.add_argument("--short_side", type=int, default=DEFAULT_SHORT_SIDE,
                   help="--video_dir: decoded frames' short side (0: native size)")
  how = p.add_argument_group("embedding (defaults: the model's evaluation settings)")
  how.add_argument("--num_frames", type=int, help="F frames per video (uniform sampling)")
  how.add_argument("--image_size", type=int, help="frame size S after resize + centre crop")
  how.add_argument("--max_len", type=int, help="caption length for queries (stored)")
  how.add_argument("--tokenizer", help="tokenizer for queries: CLIP tokenizer directory, "
                   "word .json or 'moving_shapes' (stored)")
  how.add_argument("--num_prompts", type=int, default=6,
                   help="P for a HF directory or .pth (a workdir records its own)")
  how.add_argument("--clip_config", help="for a .pth: HF config.json or its directory")
  how.add_argument("--model_dtype", choices=("float32", "bfloat16"),
                   help="compute dtype (default: the model's; params stay float32)")
  how.add_argument("--dtype", choices=store.DTYPES, default="float16",
                   help="storage dtype of a new index")
  folder = p.add_argument_group("--video_dir: kept in step with the folder")
  folder.add_argument("--commit_every", type=int, default=DEFAULT_COMMIT_EVERY,
                      help="commit after this many videos (default %(default)s)")
  folder.add_argument("--commit_seconds", type=float, default=DEFAULT_COMMIT_SECONDS,
                      help="or after this many seconds (default %(default)s)")
  folder.add_argument("--window", type=float, help="index moments: windows of this many "
                      "seconds, one row each (default: one row per whole video)")
  folder.add_argument("--stride", type=float,
                      help="--window: seconds between window starts (default half of it)")
  folder.add_argument("--window_fps", type=float,
                      help="--window: frames per second the windows sample (default 3)")
  folder.add_argument("--watch", action="store_true",
                      help="keep indexing files added or changed until interrupted")
  folder.add_argument("--watch_seconds", type=float, default=DEFAULT_WATCH_SECONDS,
                      help="how often --watch looks at the folder (default %(default)s)")
  run = p.add_argument_group("running")
  run.add_argument("--batch_size", type=int, help="global batch (default 8 per device)")
  run.add_argument("--num_workers", type=int, help="decoding threads per process")
  run.add_argument("--no_progress", action="store_true")
  run.add_argument("--coordinator_address", help="host:port of process 0 (multi-host)")
  run.add_argument("--num_processes", type=int, help="number of processes (multi-host)")
  run.add_argument("--process_id", type=int, help="this process's index (multi-host)")
  return p


def _load_kwargs(args, parser) -> Optional[dict]:
  """load_model kwargs from the flags; None (the index's own) on --append without --model."""
  try:
    return model_load_kwargs(args.model, args.num_prompts, args.clip_config, args.model_dtype)
  except IndexBuildError as e:
    parser.error(str(e))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point; returns the exit status (2: bad flags or inputs)."""
  parser = _parser()
  args = parser.parse_args(argv)
  from_dataset = args.dataset_dir is not None or args.dataset is not None
  if from_dataset == (args.video_dir is not None):
    parser.error("give --dataset_dir with --dataset (and --split), or --video_dir")
  if from_dataset and not (args.dataset_dir and args.dataset):
    parser.error("--dataset_dir and --dataset go together")
  if args.model is None and not args.append:
    parser.error("--model is required (it may be left out with --append: the index's model)")
  if args.append and args.overwrite:
    parser.error("--append and --overwrite exclude each other")
  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except distributed.DistributedError as e:
    parser.error(str(e))
  if (args.window is not None or args.stride is not None) and (from_dataset or args.append):
    parser.error("--window is for --video_dir (without --append)")
  if args.watch and (from_dataset or args.append):
    parser.error("--watch is for --video_dir (without --append)")
  if args.watch_seconds <= 0:
    parser.error(f"--watch_seconds must be > 0, got {args.watch_seconds}")
  try:
    if args.video_dir is not None and not args.append:
      return _sync(args, parser)
    if from_dataset:
      source = dataset_source(args.dataset_dir, args.dataset, args.split)
    else:
      source = video_dir_source(args.video_dir, args.frames_per_video, args.short_side or None)
    summary = build_index(args.out, source, model_path=args.model,
                          load_kwargs=_load_kwargs(args, parser), append=args.append,
                          overwrite=args.overwrite, num_frames=args.num_frames,
                          image_size=args.image_size, max_len=args.max_len,
                          tokenizer=args.tokenizer, dtype=args.dtype,
                          batch_size=args.batch_size, num_workers=args.num_workers,
                          progress=not args.no_progress)
  except (IndexBuildError, ModelLoadError, store.IndexFormatError,
          store.FingerprintMismatchError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  reporting.say(summary.line())
  return 0


def _sync(args, parser) -> int:
  """--video_dir: create, continue or update the index (and --watch)."""
  kwargs = _load_kwargs(args, parser)
  imodel = IndexModel.load(args.model, kwargs or {}) if args.model else None
  settings = dict(frames_per_video=args.frames_per_video,
                  short_side=args.short_side or None, num_frames=args.num_frames,
                  image_size=args.image_size, max_len=args.max_len,
                  tokenizer=args.tokenizer, dtype=args.dtype, overwrite=args.overwrite,
                  commit_every=args.commit_every, commit_seconds=args.commit_seconds,
                  batch_size=args.batch_size, num_workers=args.num_workers,
                  progress_bar=not args.no_progress, window=args.window,
                  stride=args.stride, window_fps=args.window_fps)

  def sync():
    summary = sync_video_dir(args.out, args.video_dir, imodel, **settings)
    settings["overwrite"] = False  # replaced once; later passes update
    reporting.say(summary.line())

  if not args.watch:
    sync()
    return 0
  reporting.say(f"watching {args.video_dir} (every {args.watch_seconds:g} s; Ctrl-C stops)")
  try:
    watch_video_dir(sync, args.video_dir, args.watch_seconds)
  except KeyboardInterrupt:
    pass
  return 0


if __name__ == "__main__":
  sys.exit(main())
