"""Embedding every video and caption of a split once, on all devices and hosts."""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import sharding
from ps_jax.data.transforms import normalize_frames


def make_encoders(model, mesh, params_sharding):
  """Jitted (encode_video, encode_text) over the batch-sharded mesh.

  encode_video(params, frames uint8[B, F, S, S, 3]) -> float32[B, E] video embeddings;
  encode_text(params, input_ids int32[B, L], attention_mask) -> float32[B, E].
  """
  def video(params, frames):
    out = model.apply({"params": params}, normalize_frames(frames), method="encode_video")
    return out["video_embedding"]

  def text(params, ids, mask):
    return model.apply({"params": params}, ids, mask, method="encode_text")

  rows = sharding.batch_sharding(mesh, 2)
  encode_video = jax.jit(video, in_shardings=(params_sharding, sharding.batch_sharding(mesh, 5)),
                         out_shardings=rows)
  encode_text = jax.jit(text, in_shardings=(params_sharding, rows, rows), out_shardings=rows)
  return encode_video, encode_text


def _gather(x) -> np.ndarray:
  """A batch-sharded global array -> the whole array, in global row order, as numpy on
  every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def embed_videos(encode_video, params, batches: Iterable[Mapping[str, np.ndarray]],
                 num_videos: int, mesh) -> np.ndarray:
  """float32[V, E] video embeddings, row v = the video with video_index v.

  `batches` are this process's slices {"frames", "video_index", "mask"} of global
  batches (the last one padded, mask False on padding).
  """
  out = None
  for local in batches:
    # Index and mask travel as global arrays laid out like the frames, so each gathered
    # embedding row keeps its video index whatever order the mesh gives the hosts' rows.
    batch = sharding.global_batch({k: local[k] for k in ("frames", "video_index", "mask")},
                                  mesh)
    emb = _gather(encode_video(params, batch["frames"]))
    index, mask = _gather(batch["video_index"]), _gather(batch["mask"])
    if out is None:
      out = np.full((num_videos, emb.shape[-1]), np.nan, np.float32)
    out[index[mask]] = emb[mask]
  if out is None or np.isnan(out).any():
    missing = num_videos if out is None else int(np.isnan(out).any(axis=1).sum())
    raise RuntimeError(f"{missing} of {num_videos} videos were not embedded")
  return out


def embed_texts(encode_text, params, input_ids: np.ndarray, attention_mask: np.ndarray,
                batch_size: int, mesh) -> np.ndarray:
  """float32[T, E] for all T captions (every process holds all of them)."""
  t = len(input_ids)
  pad = (-t) % batch_size
  ids = np.concatenate([input_ids, np.repeat(input_ids[-1:], pad, 0)])
  mask = np.concatenate([attention_mask, np.repeat(attention_mask[-1:], pad, 0)])
  mine = sharding.process_batch_rows(mesh, batch_size)  # this host's rows of each batch
  out = []
  for start in range(0, len(ids), batch_size):
    rows = start + mine
    batch = sharding.global_batch({"ids": ids[rows], "mask": mask[rows]}, mesh)
    out.append(_gather(encode_text(params, batch["ids"], batch["mask"])))
  return np.concatenate(out)[:t]
