"""Embedding the videos of a source once, on all devices and hosts, batch by batch.

Layer: jobs (imports embed, sharding, retrieval.media, retrieval.model, sources). Every
process decodes its slice of each global batch (threads), the batch is encoded on the
whole (data, fsdp) mesh, and embeddings, statuses and thumbnail strips are gathered on
every process. A video that cannot be decoded is skipped with its reason; it never
stops the run. Writing an index of them is `ps_jax.retrieval.build`'s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import jax
import numpy as np
import tqdm

from ps_jax import embed, sharding
from ps_jax.data import video as video_lib
from ps_jax.retrieval import media
from ps_jax.retrieval import windows as windows_lib
from ps_jax.retrieval.model import IndexModel
from ps_jax.retrieval.sources import IndexBuildError, VideoSource, eval_clip

# Status codes of a batch slot: 0 embedded, -1 padding, > 0 a skip reason (VideoError.reason).
SKIP_REASONS = ("missing", "empty_file", "unreadable", "no_video_stream", "corrupt", "error",
                "no_duration")


@dataclasses.dataclass
class Skipped:
  """A video that was not indexed: `reason` from SKIP_REASONS, `detail` the error."""
  video_id: str
  path: Optional[str]
  reason: str
  detail: str


@dataclasses.dataclass
class EmbedResult:
  """Embeddings of the videos that could be used.

  Attributes:
    ids: N ids embedded, in source order.
    embeddings: float32[N, E] L2-normalised video embeddings.
    thumbnails: N JPEG thumbnail strips (`ps_jax.retrieval.media`) of the clips embedded.
    skipped: videos that could not be decoded (on any process).
    partial: (video_id, warnings) of videos indexed despite decoding problems (those
      this process decoded).
    seconds: wall time of the embedding loop.
  """
  ids: list[str]
  embeddings: np.ndarray
  skipped: list[Skipped]
  partial: list[tuple[str, list[str]]]
  seconds: float
  thumbnails: list = dataclasses.field(default_factory=list)
  windows: Optional[list] = None  # per row (video id, start, end) of a windowed build


def _work(source: VideoSource, position: int, num_frames: int, num_prompts: int,
          image_size: int):
  """(clip uint8[F, S, S, 3] or None, its thumbnail strip or None, status code, warnings,
  error detail). Never raises; a strip that cannot be made leaves the video without a
  thumbnail."""
  try:
    loaded = source.load(position)
    clip = eval_clip(loaded.frames, num_frames, num_prompts, image_size)
  except Exception as e:  # pylint: disable=broad-except  # a bad video never stops the run
    code, detail = _failed(e)
    return None, None, code, [], detail
  thumb, warnings = _strip(clip, loaded.warnings)
  return clip, thumb, 0, warnings, ""


def _strip(clip: np.ndarray, warnings: list):
  """(thumbnail strip or None, warnings): a strip that cannot be made is a warning."""
  try:
    return media.strip(clip), warnings
  except Exception as e:  # pylint: disable=broad-except  # a thumbnail never fails a row
    return None, warnings + [f"no thumbnail: {type(e).__name__}: {e}"]


def _failed(e: Exception):
  """The status code and detail of a video that could not be used."""
  if isinstance(e, video_lib.VideoError):
    reason = e.reason if e.reason in SKIP_REASONS else "error"
    return 1 + SKIP_REASONS.index(reason), e.detail
  return 1 + SKIP_REASONS.index("error"), f"{type(e).__name__}: {e}"


def _work_windows(source: VideoSource, position: int, spans: list, num_frames: int,
                  num_prompts: int, image_size: int) -> list:
  """`_work`'s tuple for each window of one video, its frames decoded once."""
  try:
    clips, warnings = source.load_windows(position, spans, num_frames, num_prompts,
                                          image_size)
  except Exception as e:  # pylint: disable=broad-except  # a bad video never stops the run
    code, detail = _failed(e)
    return [(None, None, code, [], detail)] * len(spans)
  out = []
  for clip in clips:
    thumb, warned = _strip(clip, warnings)
    out.append((clip, thumb, 0, warned, ""))
  return out


@dataclasses.dataclass
class Batch:
  """What one global batch of `embed_batches` gave (the same on every process).

  Attributes:
    done: (slot, float32[E] embedding, JPEG strip: b"" without one or off process 0)
      of the rows embedded, in batch order; a slot is a position in `positions` (the
      list given, not the source), whose video is `positions[slot]`.
    skipped: (slot, Skipped) of those that could not be decoded.
    partial: (video_id, warnings) of videos embedded despite problems (this process's).
    end: positions [0, end) of the list given are now processed.
  """
  done: list
  skipped: list
  partial: list
  end: int


def embed_batches(imodel: IndexModel, source: VideoSource, positions: Sequence[int], *,
                  mesh=None, batch_size: Optional[int] = None, num_frames: int,
                  image_size: int, num_workers: Optional[int] = None,
                  prefetch_batches: int = 2, progress: bool = True,
                  on_video=None, spans: Optional[Sequence] = None) -> Iterator[Batch]:
  """Embeds `source` videos at `positions` on every device of every process, one global
  batch at a time (a generator of `Batch`; see `embed_source` for the arguments).

  `on_video(status)`, if given, is called on process 0 for every row processed (0
  embedded, > 0 skipped), as the bar advances. `spans`, if given, holds a (start, end)
  window per position (a video repeats once per window, its windows consecutive;
  `source.load_windows` decodes them): each row is then that window of the video.
  """
  mesh = mesh if mesh is not None else sharding.make_mesh()
  num_devices, num_processes = mesh.size, jax.process_count()
  g = batch_size or 8 * num_devices
  if g < 1 or g % num_devices or g % num_processes:
    raise IndexBuildError(f"--batch_size {g} must be a positive multiple of the "
                          f"{num_devices} devices and {num_processes} processes")
  p = max(imodel.model.config.num_prompts, 1)
  if num_frames < 1 or num_frames % p:
    raise IndexBuildError(f"--num_frames {num_frames} must be a positive multiple of the "
                          f"model's {p} prompts")
  positions = list(positions)
  b, lo = g // num_processes, jax.process_index() * (g // num_processes)
  num_batches = -(-len(positions) // g)
  params = jax.device_put(imodel.params, sharding.replicated(mesh))
  encode_video = embed.make_encoders(imodel.model, mesh)[0]
  workers = num_workers or min(8, os.cpu_count() or 1)
  pool = concurrent.futures.ThreadPoolExecutor(max(workers, 1))

  def submit(t):
    """Futures of this process's slots of batch t, one per slot, or per run of
    consecutive windows of one video (a list of results)."""
    start, stop = t * g + lo, min(t * g + lo + b, len(positions))
    if spans is None:
      return [pool.submit(_work, source, pos, num_frames, p, image_size)
              for pos in positions[start:stop]]
    runs, i = [], start
    while i < stop:
      j = i
      while j + 1 < stop and positions[j + 1] == positions[i]:
        j += 1
      runs.append(pool.submit(_work_windows, source, positions[i],
                              list(spans[i:j + 1]), num_frames, p, image_size))
      i = j + 1
    return runs

  def results(futures):
    for fut in futures:
      out = fut.result()
      yield from (out if isinstance(out, list) else [out])

  bar = None
  if progress and jax.process_index() == 0:
    bar = tqdm.tqdm(total=len(positions), unit=" videos", desc="index", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)
  num_skipped = 0
  pending = collections.deque()
  shape = (b, num_frames, image_size, image_size, 3)
  thumb_shape = media.strip(np.zeros((num_frames, 1, 1, 3), np.uint8)).shape
  try:
    for t in range(min(prefetch_batches + 1, num_batches)):
      pending.append(submit(t))
    for t in range(num_batches):
      futures = pending.popleft()
      if t + len(pending) + 1 < num_batches:
        pending.append(submit(t + len(pending) + 1))
      frames = np.zeros(shape, np.uint8)
      thumbs = np.zeros((b, *thumb_shape), np.uint8)
      status = np.full((b,), -1, np.int32)  # < -1: embedded without a thumbnail
      where = np.full((b,), -1, np.int32)
      details, partial = {}, []
      for j, (clip, thumb, code, warnings, detail) in enumerate(results(futures)):
        where[j], status[j] = t * g + lo + j, code
        if clip is not None:
          frames[j] = clip
          if thumb is None:
            status[j] = -2
          else:
            thumbs[j] = thumb
        if code:
          details[int(where[j])] = detail
        elif warnings:
          partial.append((source.ids[positions[where[j]]], warnings))
      # Status and position travel as global arrays laid out like the frames, so every
      # gathered embedding row keeps its video whatever order the mesh gives the hosts.
      batch = sharding.global_batch({"frames": frames, "status": status, "where": where,
                                     "thumbs": thumbs}, mesh)
      emb = sharding.gather(encode_video(params, batch["frames"]))
      status, where = sharding.gather(batch["status"]), sharding.gather(batch["where"])
      thumbs = sharding.gather(batch["thumbs"])
      done, skipped = [], []
      for j in range(g):
        slot = int(where[j])
        if status[j] == 0 or status[j] == -2:
          jpeg = (media.encode_jpeg(thumbs[j]) if jax.process_index() == 0 and status[j] == 0
                  else b"")
          done.append((slot, emb[j], jpeg))  # process 0 writes the index
        elif status[j] > 0:
          detail = details.get(slot, "decoded by another process: see its log")
          pos = positions[slot]
          skip = Skipped(source.ids[pos], source.paths[pos] if source.paths else None,
                         SKIP_REASONS[status[j] - 1], detail)
          skipped.append((slot, skip))
          if slot in details:
            _warn(f"skipped {skip.video_id} ({skip.reason}): {skip.detail}", bar)
      num_skipped += len(skipped)
      if on_video is not None and jax.process_index() == 0:
        for code in status[(status >= 0) | (status == -2)]:
          on_video(max(int(code), 0))
      if bar is not None:
        bar.update(len(done) + len(skipped))
        if num_skipped:
          bar.set_postfix(skipped=num_skipped, refresh=False)
      done.sort(key=lambda item: item[0])  # the order given, whatever the mesh's
      skipped.sort(key=lambda item: item[0])
      yield Batch(done, skipped, partial, min((t + 1) * g, len(positions)))
  finally:
    if bar is not None:
      bar.close()
    for futures in pending:
      for fut in futures:
        fut.cancel()
    pool.shutdown(wait=True)


def embed_source(imodel: IndexModel, source: VideoSource, positions: Sequence[int], *,
                 mesh=None, batch_size: Optional[int] = None, num_frames: int,
                 image_size: int, num_workers: Optional[int] = None,
                 prefetch_batches: int = 2, progress: bool = True,
                 spans: Optional[Sequence] = None) -> EmbedResult:
  """Embeds `source` videos at `positions` on every device of every process.

  Global batch t holds positions [t*G, (t+1)*G); process p decodes b = G / processes of
  them (in `num_workers` threads, `prefetch_batches` batches ahead), the batch is
  encoded sharded over the mesh, and embeddings, statuses and positions are gathered on
  every process. Slots of videos that fail to decode hold zero frames and are dropped.
  Each clip's thumbnail strip (`media.strip`, made from the frames already decoded)
  travels with it and is JPEG-encoded once gathered.

  Args:
    imodel: the model (params are placed replicated on the mesh here).
    source: the videos; positions: which of them, in order.
    mesh: a ("data", "fsdp") mesh (default: all devices, `sharding.make_mesh()`).
    batch_size: G, a multiple of the device and process counts (default 8 per device).
    num_frames: F, a multiple of the model's prompts; image_size: S.
    num_workers: decoding threads per process (default min(8, CPUs)).
    progress: a tqdm bar in videos/s on process 0.
    spans: a (start, end) window per position (`embed_batches`); the result's ids are
      then row ids `<video>@<start>-<end>` and `windows` holds each row's.

  Returns:
    EmbedResult with float32[N, E] embeddings of the N videos (windows) that decoded.
  """
  start = time.perf_counter()
  positions = list(positions)
  done, skipped, partial = [], [], []
  for batch in embed_batches(imodel, source, positions, mesh=mesh, batch_size=batch_size,
                             num_frames=num_frames, image_size=image_size,
                             num_workers=num_workers, prefetch_batches=prefetch_batches,
                             progress=progress, spans=spans):
    done += batch.done
    skipped += [skip for _, skip in batch.skipped]
    partial += batch.partial
  ids = [source.ids[positions[slot]] for slot, _, _ in done]
  windows = None
  if spans is not None:
    windows = [(video_id, *spans[slot]) for video_id, (slot, _, _) in zip(ids, done)]
    ids = [windows_lib.row_id(*w) for w in windows]
    seen = set()  # a video that failed is one skip, not one per window
    skipped = [s for s in skipped if not (s.video_id in seen or seen.add(s.video_id))]
  dim = imodel.model.clip.projection_dim
  embeddings = (np.stack([e for _, e, _ in done]).astype(np.float32) if done
                else np.zeros((0, dim), np.float32))
  return EmbedResult(ids, embeddings, skipped, partial, time.perf_counter() - start,
                     [jpeg or None for _, _, jpeg in done], windows)


def _warn(message: str, bar=None) -> None:
  if bar is not None:
    bar.write(message, file=sys.stderr)
  else:
    print(message, file=sys.stderr, flush=True)
