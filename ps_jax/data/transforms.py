"""Per-example transforms of the input pipeline (grain Map classes over numpy dicts).

Each transform reads and writes keys of an example dict and is usable on its own:
`SampleFrames`, `RandomResizedCropFlip`, `ResizeCenterCrop`, `TokenizeCaption`. Random
transforms draw from the example's own `rng` (a numpy Generator seeded from the
example's global position), so results do not depend on sharding or worker count.
`normalize_frames` (CLIP mean/std) is separate so frames can stay uint8 until the device.

Layer: data (imports `sampling`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from ps_jax.data import sampling

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SCALE = (np.asarray(CLIP_STD, np.float32) * 255.0)
_SHIFT = np.asarray(CLIP_MEAN, np.float32) * 255.0


def normalize_frames(frames):
  """CLIP normalisation of uint8 frames, on host (numpy) or inside jit (jax).

  Args:
    frames: uint8[..., 3] (numpy array, jax array or tracer).

  Returns:
    float32[..., 3] = (frames / 255 - mean) / std, same array type as the input.
  """
  return (frames.astype(np.float32) - _SHIFT) / _SCALE


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Sequence[float] = (0.5, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box: (top, left, h, w) in pixels.

  Up to 10 tries of an area fraction in `scale` and a log-uniform aspect ratio in
  `ratio`; then a centre crop with the ratio clamped to `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops (top, left, h, w) from every frame and resizes it to size x size (bicubic).

  Args:
    frames: uint8[T, H, W, 3].

  Returns:
    uint8[T, size, size, 3].
  """
  top, left, h, w = box
  if (top, left, h, w) == (0, 0, size, size) == (0, 0, *frames.shape[1:3]):
    return frames  # the whole frame at its own size (what PIL would copy)
  pil_box = (left, top, left + w, top + h)
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for i, frame in enumerate(frames):
    out[i] = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC,
                                                      box=pil_box))
  return out


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of the short side to `size`, then a centre crop (torchvision style).

  Args:
    frames: uint8[T, H, W, 3].

  Returns:
    uint8[T, size, size, 3].
  """
  t, h, w, _ = frames.shape
  if h <= w:
    new_h, new_w = size, max(size, int(size * w / h))
  else:
    new_h, new_w = max(size, int(size * h / w)), size
  top = int(round((new_h - size) / 2.0))
  left = int(round((new_w - size) / 2.0))
  out = np.empty((t, size, size, 3), np.uint8)
  for i, frame in enumerate(frames):
    img = frame if (new_h, new_w) == (h, w) else np.asarray(
        Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC))
    out[i] = img[top:top + size, left:left + size]
  return out


class SampleFrames(grain.transforms.Map):
  """frames uint8[K, H, W, 3] -> uint8[F, H, W, 3] with the chunked rand/uniform scheme."""

  def __init__(self, num_frames: int, num_prompts: int, mode: str):
    sampling.sample_frame_indices(num_prompts, num_frames, num_prompts, "uniform")  # check
    self.num_frames, self.num_prompts, self.mode = num_frames, num_prompts, mode

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    frames = element["frames"]
    idx = sampling.sample_frame_indices(len(frames), self.num_frames, self.num_prompts,
                                        self.mode, element.get("rng"))
    return element | {"frames": frames[idx]}


class RandomResizedCropFlip(grain.transforms.Map):
  """One RandomResizedCrop box and one horizontal flip shared by all frames of a clip.

  frames uint8[F, H, W, 3] -> uint8[F, size, size, 3]; draws from element["rng"].
  """

  def __init__(self, size: int, scale: Sequence[float] = (0.5, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5):
    self.size, self.scale, self.ratio, self.flip_prob = size, tuple(scale), tuple(ratio), flip_prob

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    frames, rng = element["frames"], element["rng"]
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng, self.scale,
                                  self.ratio)
    out = crop_resize(frames, box, self.size)
    if rng.random() < self.flip_prob:
      out = np.ascontiguousarray(out[:, :, ::-1])
    return element | {"frames": out}


class ResizeCenterCrop(grain.transforms.Map):
  """frames uint8[F, H, W, 3] -> uint8[F, size, size, 3] (evaluation)."""

  def __init__(self, size: int):
    self.size = size

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return element | {"frames": resize_center_crop(element["frames"], self.size)}


class TokenizeCaption(grain.transforms.Map):
  """caption str -> input_ids int32[L], attention_mask int32[L] (EOS kept on truncation)."""

  def __init__(self, tokenizer, max_len: int):
    self.tokenizer, self.max_len = tokenizer, max_len

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    ids, mask = self.tokenizer([element["caption"]], self.max_len)
    return element | {"input_ids": ids[0].astype(np.int32),
                      "attention_mask": mask[0].astype(np.int32)}


class SelectKeys(grain.transforms.Map):
  """Keeps only the given keys (what is batched)."""

  def __init__(self, keys: Sequence[str]):
    self.keys = tuple(keys)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {k: element[k] for k in self.keys}
