"""Indexing a folder of one's own videos: decoding (old vs new path), the model, and both.

Generates --videos 10-s 1280x720 30 fps H.264 clips (textured shapes moving over a
panning, textured background, so the encoder makes ordinary P and B frames; written by
`ps_jax.data.video.write_video`, libx264 veryfast crf 12 unless --crf; not timed), with
libx264's default group of pictures (keyint 250: keyframes at frames 0 and 250 of a
300-frame clip), and the first --short_gop_videos of them again with a keyframe every
--short_gop frames. Then measures, in this one process:

1. decoding as the index builder does it: one decoder thread per video, min(8, CPUs)
   videos at once in a thread pool (`ps_jax.retrieval.embedding.embed_source`'s workers),
   each video followed by `eval_clip` (F frames, resize + centre crop to S px), along
   three paths:
   - in-order: `decode_video` of the 32 evenly spread frames in one in-order pass (what
     `video_dir_source` did before it could seek or skip frames: the old path),
   - seek, 32 frames: `video_dir_source(dir, 32, short_side)` (all 32, seeking to
     keyframes where that decodes fewer frames),
   - new: `video_dir_source(dir, 32, short_side, num_frames=F, num_prompts=P)` (only the
     F of the 32 that `eval_clip` takes).
   The three must give the same eval clips bit for bit; the run aborts if not.
2. the model alone: the jitted `encode_video` of ViT-B/32 Prompt Switch (224 px, F = 12,
   P = 6, random weights, bfloat16 compute, the training configs' fast paths) on a
   batch, after a warm-up call that compiles it.
3. end to end: `embed_source` over the default-GOP folder with the new source and that
   model (decoding in its thread pool overlapped with the model, thumbnails included),
   against the goal of 10,000 10-s clips in under an hour (2.78 videos/s, 28x real
   time), with where the CPU time went.

Prints markdown tables; --results writes them with the command, commit, date, load
average and jax version. At the defaults, on 2 CPU cores shared with another job: about
4 minutes to make the clips (--clips_dir keeps them for the next run), 4 to measure:

  python benchmarks/bench_index_folder.py --results benchmarks/RESULTS_index_folder.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402

import provenance  # noqa: E402
from ps_jax import api, embed, sharding  # noqa: E402
from ps_jax.data import video as video_lib  # noqa: E402
from ps_jax.models.clip import ClipConfig, TextConfig, VisionConfig  # noqa: E402
from ps_jax.retrieval import embedding, sources  # noqa: E402
from ps_jax.retrieval.model import IndexModel  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

FRAMES_PER_VIDEO = 32  # sources.DEFAULT_FRAMES_PER_VIDEO, spelled out: the "32" rows
GOAL_VIDEOS, GOAL_SECONDS = 10_000, 3600.0  # 10,000 10-s clips in under an hour
MODELS = ("vitb32", "tiny")


# ----------------------------------------------------------------------------- clips


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8[height, width, 3]: smooth colour blobs, diagonal stripes and fine grain."""
  cells = rng.random((height // 16 + 2, width // 16 + 2, 3), dtype=np.float32)
  blobs = np.repeat(np.repeat(cells, 16, axis=0), 16, axis=1)[:height, :width]
  for axis in (0, 1):  # soften the cells' edges
    blobs = (blobs + np.roll(blobs, 8, axis) + np.roll(blobs, -8, axis)) / 3
  y, x = np.mgrid[:height, :width].astype(np.float32)
  stripes = 30 * np.sin(x / 7.0 + y / 11.0)[..., None]
  grain = rng.normal(0, 18, (height, width, 3)).astype(np.float32)
  return np.clip(60 + 120 * blobs + stripes + grain, 0, 255).astype(np.uint8)


def sprites(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """`count` (uint8[h, w, 3] texture, bool[h, w] mask): flat discs and boxes, and
  checkered discs and boxes (texture the encoder must follow as it moves)."""
  out = []
  for i in range(count):
    r = int(rng.integers(30, 120))
    y, x = np.mgrid[-r:r, -r:r]
    mask = (x * x + y * y < r * r) if i % 2 == 0 else np.ones((2 * r, 2 * r), bool)
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    texture = np.broadcast_to(colour, (2 * r, 2 * r, 3)).copy()
    if i % 4 >= 2:
      squares = ((x // 12 + y // 12) % 2 == 0)[..., None]
      texture = np.where(squares, texture, 255 - texture).astype(np.uint8)
    out.append((texture, mask))
  return out


def paste(frame: np.ndarray, texture: np.ndarray, mask: np.ndarray, top: int,
          left: int) -> None:
  """Draws `texture` where `mask` onto uint8[H, W, 3] `frame` at (top, left), clipped."""
  h, w = mask.shape
  y0, x0 = max(top, 0), max(left, 0)
  y1, x1 = min(top + h, frame.shape[0]), min(left + w, frame.shape[1])
  if y1 <= y0 or x1 <= x0:
    return
  sy, sx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
  np.copyto(frame[y0:y1, x0:x1], texture[sy, sx], where=mask[sy, sx, None])


def make_frames(seed: int, seconds: float, fps: int, width: int, height: int) -> np.ndarray:
  """uint8[T, height, width, 3], T = seconds * fps: six sprites moving at their own
  speeds (wrapping around) over a background that pans like a slow camera."""
  rng = np.random.default_rng(seed)
  my, mx = height // 8, width // 8  # pan range
  back = background(rng, height + 2 * my, width + 2 * mx)
  things = sprites(rng, 6)
  starts = rng.uniform(0, 1, (len(things), 2)) * (height, width)
  speeds = rng.uniform(-8, 8, (len(things), 2))
  n = int(round(seconds * fps))
  frames = np.empty((n, height, width, 3), np.uint8)
  for t in range(n):
    oy = int(my + (my - 1) * np.cos(t / (1.9 * fps)))
    ox = int(mx + (mx - 1) * np.sin(t / (1.5 * fps)))
    frames[t] = back[oy:oy + height, ox:ox + width]
    for (texture, mask), start, speed in zip(things, starts, speeds):
      h, w = mask.shape
      y = (start[0] + speed[0] * t) % (height + h) - h
      x = (start[1] + speed[1] * t) % (width + w) - w
      paste(frames[t], texture, mask, int(y), int(x))
  return frames


def codec_options(gop: int | None, crf: int | None) -> dict | None:
  """write_video's codec_options: keyframe interval (None: libx264's default) and crf."""
  opts = {}
  if gop:
    opts["g"] = str(gop)
  if crf is not None:
    opts["crf"] = str(crf)
  return opts or None


def _write_clip(path: str, seed: int, seconds: float, fps: int, width: int, height: int,
                gops: tuple) -> None:
  """Writes clip `seed` once per GOP setting: `path` formatted with each (a process job)."""
  frames = make_frames(seed, seconds, fps, width, height)
  for gop, crf in gops:
    video_lib.write_video(path.format(gop=gop or "default"), frames, fps=fps,
                          codec_options=codec_options(gop, crf))


def write_clips(root: str, count: int, short_gop_count: int, short_gop: int,
                crf: int | None, seconds: float, fps: int, width: int, height: int,
                workers: int) -> dict[str, str]:
  """Writes (or finds, from an earlier run) the clips; returns {gop label: folder}.

  `count` clips with the default GOP in <root>/g_default, the first `short_gop_count`
  of them also with `short_gop` in <root>/g_<short_gop>; file clip<i>.mp4; `workers`
  processes write them (0: this one)."""
  gop_counts = [(None, count)] + ([(short_gop, short_gop_count)] if short_gop_count else [])
  tag = f"{width}x{height}_{fps}fps_{seconds:g}s_crf{crf if crf is not None else 'w'}"
  dirs = {}
  for gop, _ in gop_counts:
    dirs[gop] = os.path.join(root, tag, f"g_{gop or 'default'}")
    os.makedirs(dirs[gop], exist_ok=True)
  template = os.path.join(root, tag, "g_{gop}", "clip{i:03d}.mp4")
  jobs = []
  for i in range(count):
    gops = tuple((gop, crf) for gop, n in gop_counts if i < n and not os.path.exists(
        template.format(gop=gop or "default", i=i)))
    if gops:
      jobs.append((template.replace("{i:03d}", f"{i:03d}"), i, gops))
  if workers < 1:
    for path, i, gops in jobs:
      _write_clip(path, i, seconds, fps, width, height, gops)
  else:
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running jax
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
      for fut in [pool.submit(_write_clip, path, i, seconds, fps, width, height, gops)
                  for path, i, gops in jobs]:
        fut.result()
  return {("default" if gop is None else f"g={gop}"): d for gop, d in dirs.items()}


def folder_stats(folder: str, seconds: float) -> tuple[float, float]:
  """(mean keyframes per clip, mean bitrate in Mbit/s) of the .mp4 files in `folder`,
  `seconds` long each; keyframes counted by demuxing."""
  paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".mp4")]
  keys = []
  for path in paths:
    with av.open(path) as container:
      keys.append(sum(bool(p.is_keyframe) for p in container.demux(video=0) if p.size))
  sizes = [os.path.getsize(path) for path in paths]
  return float(np.mean(keys)), float(np.mean(sizes)) * 8 / seconds / 1e6


# ----------------------------------------------------------------------------- decoding


def in_order_source(folder: str, short_side: int | None) -> sources.VideoSource:
  """The old path: `video_dir_source` of `folder` as it was before seeking (one in-order
  pass decoding the whole stream, keeping the 32 evenly spread frames)."""
  base = sources.video_dir_source(folder, FRAMES_PER_VIDEO, short_side)

  def load(i: int) -> sources.Loaded:
    decoded = video_lib.decode_video(base.paths[i], num_frames=FRAMES_PER_VIDEO,
                                     short_side=short_side, threads=1)
    return sources.Loaded(decoded.frames, list(decoded.warnings))

  return sources.VideoSource(base.ids, load, base.paths, {**base.info, "seek": False})


def decoding_paths(folder: str, short_side: int | None, num_frames: int,
                   num_prompts: int) -> dict[str, sources.VideoSource]:
  """{row label: source} of the three decoding paths compared (module docstring)."""
  return {
      "in-order, 32 frames (old)": in_order_source(folder, short_side),
      "seek, 32 frames": sources.video_dir_source(folder, FRAMES_PER_VIDEO, short_side),
      f"seek, the {num_frames} eval_clip takes (new)": sources.video_dir_source(
          folder, FRAMES_PER_VIDEO, short_side, num_frames=num_frames,
          num_prompts=num_prompts),
  }


@contextlib.contextmanager
def recording_decodes():
  """Within: every `video_lib.decode_video` call (the sources' too) appends its
  DecodedVideo.frames_decoded to the list yielded."""
  counts, original = [], video_lib.decode_video

  def counting(*args, **kwargs):
    decoded = original(*args, **kwargs)
    counts.append(decoded.frames_decoded)
    return decoded

  video_lib.decode_video = counting
  try:
    yield counts
  finally:
    video_lib.decode_video = original


def timed_source(source: sources.VideoSource, log: list) -> sources.VideoSource:
  """`source` whose load appends (wall s, this thread's CPU s) of each call to `log`."""
  def load(i: int) -> sources.Loaded:
    wall, cpu = time.perf_counter(), time.thread_time()
    loaded = source.load(i)
    log.append((time.perf_counter() - wall, time.thread_time() - cpu))
    return loaded

  return sources.VideoSource(source.ids, load, source.paths, source.info)


def decode_pass(source: sources.VideoSource, num_frames: int, num_prompts: int,
                image_size: int, workers: int) -> dict:
  """Loads every video of `source` and makes its eval clip, `workers` at a time.

  Returns {"seconds": wall time, "cpu_s": process CPU time, "clips": uint8[V, F, S, S, 3],
  "load_s": per-video load wall s, "load_cpu_s", "frames_decoded": per-video frames the
  decoder produced}."""
  log = []
  timed = timed_source(source, log)

  def work(i: int) -> np.ndarray:
    return sources.eval_clip(timed.load(i).frames, num_frames, num_prompts, image_size)

  with recording_decodes() as counts:
    start, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      clips = list(pool.map(work, range(len(source.ids))))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  return {"seconds": seconds, "cpu_s": cpu, "clips": np.stack(clips),
          "load_s": [w for w, _ in log], "load_cpu_s": [c for _, c in log],
          "frames_decoded": list(counts)}


def check_same_clips(reference: np.ndarray, clips: np.ndarray, ids: list[str],
                     label: str) -> None:
  """Raises SystemExit naming the first video whose eval clip differs from the old path's."""
  for i, video_id in enumerate(ids):
    if not np.array_equal(reference[i], clips[i]):
      raise SystemExit(f"ABORT: {label}: the eval clip of {video_id} differs from the "
                       f"in-order path's (max |diff| "
                       f"{np.abs(reference[i].astype(int) - clips[i]).max()})")


def measure_decoding(folder: str, short_side: int | None, num_frames: int,
                     num_prompts: int, image_size: int, workers: int,
                     repeats: int) -> dict[str, dict]:
  """{path label: {"seconds": median wall s of `repeats` passes, "all_s", "videos",
  "frames_decoded": mean, "load_cpu_s": mean CPU s per load, "cores": process CPU s per
  wall s}}; the eval clips of every path are checked against the first (old) path's."""
  out, reference = {}, None
  for label, source in decoding_paths(folder, short_side, num_frames, num_prompts).items():
    runs = [decode_pass(source, num_frames, num_prompts, image_size, workers)
            for _ in range(repeats)]
    if reference is None:
      reference = runs[0]["clips"]
    for run in runs:
      check_same_clips(reference, run["clips"], source.ids, label)
    out[label] = {"seconds": statistics.median(r["seconds"] for r in runs),
                  "all_s": [r["seconds"] for r in runs], "videos": len(source.ids),
                  "frames_decoded": float(np.mean(runs[0]["frames_decoded"])),
                  "load_cpu_s": float(np.mean(runs[0]["load_cpu_s"])),
                  "cores": sum(r["cpu_s"] for r in runs) / sum(r["seconds"] for r in runs)}
  return out


# ----------------------------------------------------------------------------- model


def build_model(name: str) -> IndexModel:
  """ViT-B/32 Prompt Switch (P = 6, caption head) or a tiny one, random weights,
  bfloat16 compute with the training configs' fast paths (patch embedding as a matmul,
  unrolled scan); num_frames 12 (2 chunks of P)."""
  if name == "vitb32":
    clip = ClipConfig()
  elif name == "tiny":
    clip = ClipConfig(
        TextConfig(vocab_size=64, max_position_embeddings=8, hidden_size=32,
                   intermediate_size=48, num_hidden_layers=1, num_attention_heads=2),
        VisionConfig(image_size=32, patch_size=16, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=2, num_attention_heads=2), projection_dim=32)
  else:
    raise ValueError(f"--model must be one of {MODELS}, got {name!r}")
  model = api.build_model(clip, num_prompts=6, dtype="bfloat16", patch_embed="matmul",
                          scan_unroll=clip.vision.num_hidden_layers)
  params = api.init_model_params(model, jax.random.PRNGKey(0))
  return IndexModel.from_params(model, params, tokenizer="moving_shapes")


def time_model(imodel: IndexModel, batch: int, calls: int, mesh) -> dict:
  """encode_video on uint8[batch, F, S, S, 3] random frames, placed as embed_source
  places its batches: {"first_s": the compiling call, "seconds": median steady call,
  "all_s", "cores": process CPU s per wall s of the steady calls}."""
  d = imodel.defaults
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (batch, d["num_frames"], d["image_size"], d["image_size"], 3),
                        dtype=np.uint8)
  params = jax.device_put(imodel.params, sharding.replicated(mesh))
  encode_video = embed.make_encoders(imodel.model, mesh)[0]
  times, cpu = [], 0.0
  for _ in range(calls + 1):
    start, cpu_start = time.perf_counter(), time.process_time()
    placed = sharding.global_batch({"frames": frames}, mesh)["frames"]
    sharding.gather(encode_video(params, placed))
    times.append(time.perf_counter() - start)
    cpu += (time.process_time() - cpu_start) if len(times) > 1 else 0.0
  return {"first_s": times[0], "seconds": statistics.median(times[1:]), "all_s": times[1:],
          "cores": cpu / sum(times[1:])}


def end_to_end(imodel: IndexModel, source: sources.VideoSource, batch: int, workers: int,
               mesh) -> dict:
  """`embedding.embed_source` over every video of `source`: {"seconds": its wall time,
  "videos", "load_cpu_s": CPU s in source.load (all threads), "process_cpu_s",
  "frames_decoded": mean}."""
  log = []
  timed = timed_source(source, log)
  d = imodel.defaults
  with recording_decodes() as counts:
    cpu = time.process_time()
    result = embedding.embed_source(imodel, timed, range(len(source.ids)), mesh=mesh,
                                batch_size=batch, num_frames=d["num_frames"],
                                image_size=d["image_size"], num_workers=workers,
                                progress=False)
    process_cpu = time.process_time() - cpu
  if result.skipped:
    raise SystemExit(f"ABORT: embed_source skipped {[s.video_id for s in result.skipped]}")
  return {"seconds": result.seconds, "videos": len(result.ids),
          "load_cpu_s": float(sum(c for _, c in log)), "process_cpu_s": process_cpu,
          "frames_decoded": float(np.mean(counts))}


# ----------------------------------------------------------------------------- report


def decoding_table(results: dict[str, dict[str, dict]], stats: dict[str, tuple],
                   seconds: float) -> list[str]:
  """Markdown rows: one per (GOP, path); `stats`: `folder_stats` of each GOP's folder."""
  lines = ["| GOP | keyframes per clip | Mbit/s | decoding path | videos | videos/s "
           "| x real time | frames decoded per video | decode CPU s per video | cores busy "
           "| vs old |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for gop, paths in results.items():
    old = next(iter(paths.values()))
    keys, mbit = stats[gop]
    for label, r in paths.items():
      rate = r["videos"] / r["seconds"]
      lines.append(f"| {gop} | {keys:.1f} | {mbit:.1f} | {label} | {r['videos']} | {rate:.2f} "
                   f"| {rate * seconds:.1f}x | {r['frames_decoded']:.0f} "
                   f"| {r['load_cpu_s']:.2f} | {r['cores']:.2f} "
                   f"| {old['seconds'] / r['seconds']:.2f}x |")
  return lines


def model_table(name: str, imodel: IndexModel, batch: int, r: dict,
                seconds: float) -> list[str]:
  """Markdown rows of the model-alone timing (`seconds`: of video per clip)."""
  d = imodel.defaults
  rate = batch / r["seconds"]
  return ["| model | frames x px | batch | s per batch (steady) | videos/s | x real time "
          "| CPU s per video | cores busy | first call (compile) s |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|",
          f"| {name}, bfloat16 | {d['num_frames']} x {d['image_size']} | {batch} "
          f"| {r['seconds']:.2f} | {rate:.2f} | {rate * seconds:.1f}x "
          f"| {r['seconds'] * r['cores'] / batch:.2f} | {r['cores']:.2f} "
          f"| {r['first_s']:.1f} |"]


def end_to_end_table(r: dict, decode: dict, model_s_per_video: float,
                     seconds: float, batch: int) -> list[str]:
  """The overlapped run against the goal, and where its CPU time went."""
  rate = r["videos"] / r["seconds"]
  goal = GOAL_VIDEOS / GOAL_SECONDS
  decode_s = decode["seconds"] / decode["videos"]
  serial = 1 / (decode_s + model_s_per_video)
  load_cpu, other_cpu = r["load_cpu_s"] / r["videos"], (
      r["process_cpu_s"] - r["load_cpu_s"]) / r["videos"]
  share = r["load_cpu_s"] / r["process_cpu_s"]
  return ["| run | videos | videos/s | x real time | vs goal (2.78 videos/s, 28x) "
          "| decode alone + model alone, one after the other |",
          "|---|---:|---:|---:|---:|---:|",
          f"| embed_source, new source, batch {batch} | {r['videos']} | {rate:.2f} "
          f"| {rate * seconds:.1f}x | {rate / goal:.2f} of it | {serial:.2f} videos/s |",
          "",
          "| CPU s per video in the run | decoding (source.load) | model, crops, thumbnails "
          "(the rest) | total | decode share | cores busy |",
          "|---|---:|---:|---:|---:|---:|",
          f"| measured | {load_cpu:.2f} | {other_cpu:.2f} | {load_cpu + other_cpu:.2f} "
          f"| {share:.0%} | {r['process_cpu_s'] / r['seconds']:.2f} |"]


def cores_line(decode: dict, model: dict, batch: int) -> str:
  """Cores the goal rate needs for decoding (new path) and for the model on this CPU."""
  rate = GOAL_VIDEOS / GOAL_SECONDS
  model_cpu = model["seconds"] * model["cores"] / batch
  return (f"Extrapolated (CPU s per video x 2.78 videos/s): the goal needs "
          f"{decode['load_cpu_s'] * rate:.1f} cores for decoding alone on the new path "
          f"({decode['load_cpu_s']:.2f} CPU s per video), and "
          f"{model_cpu * rate:.1f} more for this model on this CPU "
          f"({model_cpu:.2f} CPU s per video), or an accelerator.")


NOTES = [
    "- videos/s: videos over the wall time of the pass; x real time: seconds of video "
    "per second (videos/s x clip length).",
    "- decode CPU s per video: CPU time of the thread in `source.load` (decoding, RGB "
    "conversion, short-side resize), eval_clip's crop not included.",
    "- cores busy: this process's CPU time over wall time; below the core count, the "
    "threads waited (for each other, or for other processes on the machine).",
    "- decode alone + model alone, one after the other: 1 / (decode s per video + model "
    "s per video) from the two tables above; the end-to-end rate matches it when the "
    "overlap buys nothing (both compete for the same cores).",
    "- model, crops, thumbnails: the run's process CPU time less its source.load time.",
]


def write_results(path: str, lines: list[str], made_by: dict, load_start, load_end,
                  note: str = "") -> None:
  """The tables as markdown, with what produced them (`made_by`: a `provenance.record`)
  and `note` (what else ran on the machine) under it."""
  fmt = lambda load: ", ".join(f"{x:.2f}" for x in load)
  head = ["# Indexing a folder of one's own videos (benchmarks/bench_index_folder.py)", "",
          f"`{made_by['command']}`", "",
          provenance.commit_line(made_by), "",
          f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}); {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}); load average (1, 5, 15 min) "
          f"{fmt(load_start)} at the start, {fmt(load_end)} at the end.", ""]
  if note:
    head += [note, ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(head + lines) + "\n")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", type=int, default=24, help="clips with the default GOP")
  parser.add_argument("--short_gop", type=int, default=30,
                      help="keyframe interval of the second set of clips")
  parser.add_argument("--short_gop_videos", type=int, default=8,
                      help="how many of the clips also get --short_gop (0: none)")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--width", type=int, default=1280)
  parser.add_argument("--height", type=int, default=720)
  parser.add_argument("--fps", type=int, default=30)
  parser.add_argument("--crf", type=int, default=None,
                      help="libx264 crf (default: write_video's 12)")
  parser.add_argument("--short_side", type=int, default=sources.DEFAULT_SHORT_SIDE,
                      help="decoded frames' short side (index_videos' default)")
  parser.add_argument("--model", choices=MODELS, default="vitb32")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch (default 8 per device, index_videos' default)")
  parser.add_argument("--num_workers", type=int, default=None,
                      help="decoding threads (default min(8, CPUs), embed_source's)")
  parser.add_argument("--repeats", type=int, default=1,
                      help="decoding passes per path (the median is reported)")
  parser.add_argument("--model_calls", type=int, default=3,
                      help="timed encode_video calls after the warm-up")
  parser.add_argument("--gen_workers", type=int, default=os.cpu_count() or 1,
                      help="processes writing the clips (0: this one)")
  parser.add_argument("--clips_dir", default=None,
                      help="where the clips go and are reused from (default: a temp dir)")
  parser.add_argument("--results", default="", help="also write the tables here")
  parser.add_argument("--note", default="",
                      help="a sentence for the results file (what else ran on the machine)")
  args = parser.parse_args(argv)
  made_by = provenance.record("bench_index_folder.py", sys.argv[1:] if argv is None else argv)
  load_start = os.getloadavg()
  workers = args.num_workers or min(8, os.cpu_count() or 1)

  tmp = tempfile.mkdtemp(prefix="bench_index_folder_")
  try:
    t0 = time.perf_counter()
    folders = write_clips(args.clips_dir or tmp, args.videos, args.short_gop_videos,
                          args.short_gop, args.crf, args.seconds, args.fps, args.width,
                          args.height, args.gen_workers)
    stats = {gop: folder_stats(d, args.seconds) for gop, d in folders.items()}
    print(f"  clips ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    batch = args.batch_size or 8 * jax.device_count()
    imodel = build_model(args.model)
    d = imodel.defaults
    num_prompts = imodel.model.config.num_prompts
    decoding = {}
    for gop, folder in folders.items():
      decoding[gop] = measure_decoding(folder, args.short_side or None, d["num_frames"],
                                       num_prompts, d["image_size"], workers, args.repeats)
      print(f"  decoded {gop}: {[round(r['seconds'], 1) for r in decoding[gop].values()]} s",
            file=sys.stderr)
    mesh = sharding.make_mesh()
    model_run = time_model(imodel, batch, args.model_calls, mesh)
    print(f"  model: first {model_run['first_s']:.1f} s, steady "
          f"{[round(s, 2) for s in model_run['all_s']]} s", file=sys.stderr)
    new_label, new = list(decoding["default"].items())[-1]
    source = decoding_paths(folders["default"], args.short_side or None, d["num_frames"],
                            num_prompts)[new_label]
    e2e = end_to_end(imodel, source, batch, workers, mesh)
    print(f"  end to end: {e2e['seconds']:.1f} s", file=sys.stderr)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  load_end = os.getloadavg()

  crf = args.crf if args.crf is not None else 12
  lines = [f"{args.videos} clips of {args.seconds:g} s, {args.width}x{args.height} at "
           f"{args.fps} fps, H.264 (libx264 veryfast, crf {crf}; GOP default = libx264's "
           f"keyint 250), the first {args.short_gop_videos} also with g={args.short_gop}; "
           f"decoded to short side {args.short_side}, {d['num_frames']} frames of "
           f"{d['image_size']} px (P = {num_prompts}) per clip; {workers} decoding threads "
           "(one decoder thread per video); random weights.", "",
           "### Decoding (load + eval_clip, no model)", ""]
  lines += decoding_table(decoding, stats, args.seconds)
  lines += ["", "Every path gave the same eval clips, bit for bit, as the in-order one.", "",
            "### The model alone (encode_video, steady state)", ""]
  lines += model_table(args.model, imodel, batch, model_run, args.seconds)
  lines += ["", "### End to end (embed_source: decoding overlapped with the model)", ""]
  lines += end_to_end_table(e2e, new, model_run["seconds"] / batch, args.seconds, batch)
  lines += ["", cores_line(new, model_run, batch), ""] + NOTES
  print("\n".join(lines))
  if args.results:
    write_results(args.results, lines, made_by, load_start, load_end, args.note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
