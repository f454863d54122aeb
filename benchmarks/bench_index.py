"""Indexing throughput (videos/s) of ps_jax.index_videos, and end-to-end text query latency.

Measures, on this machine's devices, with random weights (throughput does not depend
on them):
1. the demo model (configs/demo.py architecture: 32 px, 4 test frames, P = 4) indexing
   a prepared moving_shapes/demo split (frames already decoded: model + input pipeline;
   --max_videos N: only its first N videos),
2. the same model indexing the same clips as raw .mp4 files under --video_dir (PyAV
   decoding included),
3. optionally (--vit_b32 N) a ViT-B/32 Prompt Switch (224 px, 12 frames, P = 6, the
   official test recipe) on N videos of that split, resized to 224 px,
4. text query latency end to end (tokenize + jitted encode_text + top-10 over an index
   of --query_index_size random rows) for the demo model: one query, and batches.
Every indexing run is done twice and the second is reported (the first includes jit
compilation); both are printed. Prints markdown tables.

  python benchmarks/bench_index.py --vit_b32 32
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402

from ps_jax import api, embed, experiment, sharding  # noqa: E402
from ps_jax.config_defaults import load_config_file  # noqa: E402
from ps_jax.data import moving_shapes, preparation  # noqa: E402
from ps_jax.data import video as video_lib  # noqa: E402
from ps_jax.models.clip import ClipConfig  # noqa: E402
from ps_jax.retrieval import build, query, sources, topk  # noqa: E402
from ps_jax.retrieval.model import IndexModel  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "moving_shapes/demo"


def demo_model() -> IndexModel:
  """configs/demo.py's architecture with random weights, as an in-memory IndexModel."""
  config = load_config_file(os.path.join(REPO, "configs", "demo.py"))
  tokenizer = moving_shapes.make_tokenizer()
  model = api.build_model(experiment.clip_config_from(config, tokenizer),
                          **experiment.model_options(config))
  params = api.init_model_params(model, jax.random.PRNGKey(0))
  return IndexModel.from_params(
      model, params, num_frames=config.data.eval_num_frames, max_len=config.data.max_len,
      tokenizer="moving_shapes")


def vit_b32_model() -> IndexModel:
  """ViT-B/32 Prompt Switch (6 prompts, caption head) with random weights."""
  model = api.build_model(ClipConfig(), num_prompts=6)
  params = api.init_model_params(model, jax.random.PRNGKey(0))
  return IndexModel.from_params(model, params, tokenizer="moving_shapes")


def time_index(imodel, source, out_root: str, name: str, **kwargs) -> list[dict]:
  """Builds the index twice (cold: with compilation, warm); returns both summaries."""
  runs = []
  for attempt in ("cold", "warm"):
    out = os.path.join(out_root, f"{name}_{attempt}")
    start = time.perf_counter()
    summary = build.build_index(out, source, imodel, progress=False, **kwargs)
    runs.append({"attempt": attempt, "videos": summary.added + len(summary.skipped),
                 "embed_s": summary.seconds, "total_s": time.perf_counter() - start,
                 "videos_per_s": summary.videos_per_s})
    shutil.rmtree(out)
  return runs


def query_latency(imodel, n: int, batch: int, budget_s: float) -> dict:
  """p50 / p95 (ms) of TextSearcher.search for 1 query and for `batch` queries."""
  rng = np.random.default_rng(0)
  rows = rng.standard_normal((n, imodel.model.clip.projection_dim)).astype(np.float32)
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  mesh = sharding.make_mesh()
  encoder = embed.TextEncoder(imodel.model, imodel.params, moving_shapes.make_tokenizer(),
                               imodel.defaults["max_len"], mesh=mesh, batch_size=batch)
  searcher = query.TextSearcher(
      topk.Searcher(rows, [f"v{i}" for i in range(n)], mesh=mesh, batch_size=batch), encoder)
  captions = [c for clip in moving_shapes.iter_clips(moving_shapes.SIZES["tiny"], "train")
              for c in clip.captions]
  out = {}
  for size in (1, batch):
    sets = [[captions[(i * size + j) % len(captions)] for j in range(size)] for i in range(8)]
    for texts in sets[:2]:
      searcher.search(texts, 10)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 200):
      texts = sets[len(times) % len(sets)]
      t0 = time.perf_counter()
      searcher.search(texts, 10)
      times.append(time.perf_counter() - t0)
    out[size] = np.percentile(times, [50, 95]) * 1e3
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", help="where moving_shapes/demo is (or gets) prepared "
                      "(default: a temporary directory)")
  parser.add_argument("--split", default="train", help="split to index (train: 384 clips)")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch (default 8 per device, index_videos' default)")
  parser.add_argument("--num_workers", type=int, default=None, help="decoding threads")
  parser.add_argument("--max_videos", type=int, default=0,
                      help="index only the split's first N videos (0: all of them)")
  parser.add_argument("--vit_b32", type=int, default=0,
                      help="also index this many videos with a ViT-B/32 at 224 px (0: skip)")
  parser.add_argument("--query_index_size", type=int, default=100_000)
  parser.add_argument("--query_batch", type=int, default=64)
  parser.add_argument("--budget_s", type=float, default=3.0)
  args = parser.parse_args(argv)

  tmp = tempfile.mkdtemp(prefix="bench_index_")
  try:
    data_dir = args.data_dir or os.path.join(tmp, "data")
    t0 = time.perf_counter()
    preparation.prepare("moving_shapes", out_dir=data_dir, shapes_size="demo", progress=False)
    source = sources.dataset_source(data_dir, DATASET, args.split)
    if args.max_videos:
      source = sources.VideoSource(source.ids[:args.max_videos], source.load, None,
                                   source.info)
    clips = {c.video_id: c for c in moving_shapes.iter_clips(moving_shapes.SIZES["demo"],
                                                               args.split)}
    video_dir = os.path.join(tmp, "videos")
    os.makedirs(video_dir)
    for video_id in source.ids:
      video_lib.write_video(os.path.join(video_dir, video_id + ".mp4"),
                            clips[video_id].frames, fps=8)
    print(f"  data ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    demo = demo_model()
    common = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    rows = []
    runs = time_index(demo, source, tmp, "demo_prepared", **common)
    rows.append(("demo (configs/demo.py), prepared split", demo, runs))
    raw = sources.video_dir_source(video_dir, short_side=None)
    runs = time_index(demo, raw, tmp, "demo_raw", **common)
    rows.append(("demo (configs/demo.py), raw .mp4 (PyAV decode)", demo, runs))
    if args.vit_b32:
      vit = vit_b32_model()
      subset = sources.VideoSource(source.ids[:args.vit_b32], source.load, None,
                                        source.info)
      runs = time_index(vit, subset, tmp, "vit_b32", **common)
      rows.append(("ViT-B/32 Prompt Switch, prepared split resized to 224", vit, runs))
    latency = query_latency(demo, args.query_index_size, args.query_batch, args.budget_s)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  g = args.batch_size or 8 * jax.device_count()
  print(f"Indexing with ps_jax.index_videos: jax {jax.__version__} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}); {os.cpu_count()} CPU "
        f"cores ({platform.processor() or platform.machine()}); global batch {g}; random "
        "weights.\n")
  print("| model, videos from | frames x px | videos | videos/s | s per 1k videos "
        "| first run videos/s (incl. compile*) |")
  print("|---|---|---:|---:|---:|---:|")
  for name, imodel, (cold, warm) in rows:
    d = imodel.defaults
    print(f"| {name} | {d['num_frames']} x {d['image_size']} | {warm['videos']} "
          f"| {warm['videos_per_s']:.1f} | {1000 / warm['videos_per_s']:.0f} "
          f"| {cold['videos'] / cold['total_s']:.1f} |")
  print("\n\\* The first run of a model in a process compiles encode_video; the raw .mp4 "
        "row reuses the demo model's compiled function.")
  print(f"\nText query end to end (tokenize, jitted encode_text of the demo model, exact "
        f"top-10 over {args.query_index_size:,} rows of dim "
        f"{demo.model.clip.projection_dim}), TextSearcher.search:\n")
  print("| queries per call | p50 (ms) | p95 (ms) |")
  print("|---:|---:|---:|")
  for size, (p50, p95) in latency.items():
    print(f"| {size} | {p50:.2f} | {p95:.2f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
