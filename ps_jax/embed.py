"""Embedding videos and texts on all devices and hosts: the one encoder factory.

Layer: assembly (imports sharding and data.transforms). Evaluation, indexing and search
all encode through `make_encoders`:

  encode_video, encode_text = make_encoders(model, mesh, params_sharding)
  videos = embed_videos(encode_video, params, batches, num_videos, mesh)   # evaluation
  texts = embed_texts(encode_text, params, ids, mask, batch_size, mesh)
  TextEncoder(model, params, tokenizer, max_len)(["a dog runs"])          # queries
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import jax
import numpy as np

from ps_jax import sharding
from ps_jax.data.transforms import normalize_frames

_REPLICATED: dict = {}


def make_encoders(model, mesh, params_sharding=None):
  """Jitted (encode_video, encode_text) over the batch-sharded mesh.

  encode_video(params, frames uint8[B, F, S, S, 3]) -> float32[B, E] video embeddings;
  encode_text(params, input_ids int32[B, L], attention_mask) -> float32[B, E]. Both take
  the model's params placed as `params_sharding` (default: replicated on `mesh`, in
  which case the pair is built once per (model, mesh) and reused).
  """
  if params_sharding is None:
    key = (model, mesh)
    if key not in _REPLICATED:
      _REPLICATED[key] = make_encoders(model, mesh, sharding.replicated(mesh))
    return _REPLICATED[key]

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
    emb = sharding.gather(encode_video(params, batch["frames"]))
    index, mask = sharding.gather(batch["video_index"]), sharding.gather(batch["mask"])
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
    out.append(sharding.gather(encode_text(params, batch["ids"], batch["mask"])))
  return np.concatenate(out)[:t]


def text_params(params: dict) -> dict:
  """The subtree `encode_text` reads: the text tower, its projection and logit_scale."""
  return {k: params[k] for k in ("text_model", "text_projection", "logit_scale") if k in params}


class TextEncoder:
  """Texts -> float32[Q, E] L2-normalised embeddings (search queries), on one process.

  Texts are tokenized to `max_len` ids and encoded in batches of at most `batch_size`,
  a last, smaller batch padded to a power of two (few compiled shapes). Only the text
  tower's params are placed on the devices, replicated over `mesh`.
  """

  def __init__(self, model, params, tokenizer, max_len: int, *, mesh=None,
               batch_size: int = 64):
    """Args: model, params: a PromptSwitch and its params; tokenizer: a ps_jax tokenizer;
    max_len: L; mesh: devices to replicate the text params on (default all)."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.tokenizer, self.max_len, self.batch_size = tokenizer, int(max_len), int(batch_size)
    self.dim = int(model.clip.projection_dim)
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self._params = jax.device_put(text_params(params), sharding.replicated(self.mesh))
    self._encode = make_encoders(model, self.mesh)[1]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """float32[Q, E] embeddings of Q texts."""
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise ValueError(f"query {i} must be a string, got {type(text).__name__}")
    n = self.mesh.size
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start:start + self.batch_size]
      ids, mask = self.tokenizer(chunk, self.max_len)
      padded = _bucket(len(chunk), self.batch_size, n)
      if padded > len(chunk):
        ids = np.concatenate([ids, np.repeat(ids[-1:], padded - len(chunk), 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], padded - len(chunk), 0)])
      batch = sharding.global_batch({"ids": np.asarray(ids, np.int32),
                                     "mask": np.asarray(mask, np.int32)}, self.mesh)
      emb = sharding.gather(self._encode(self._params, batch["ids"], batch["mask"]))
      out.append(np.asarray(emb, np.float32)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _bucket(n: int, batch_size: int, num_devices: int) -> int:
  """Rows to encode for n texts: the next power of two (at most batch_size), rounded up
  to a multiple of the devices the batch is split over."""
  rows = min(batch_size, 1 << max(n - 1, 0).bit_length())
  return -(-max(rows, n) // num_devices) * num_devices
