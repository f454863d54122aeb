"""Per-example transforms of the input pipeline (grain Map classes over numpy dicts).

Each transform reads and writes keys of an example dict and is usable on its own:
`SampleFrames`, `RandomResizedCropFlip`, `ResizeCenterCrop`, `TokenizeCaption`. Random
transforms draw from the example's own `rng` (a numpy Generator seeded from the
example's global position), so results do not depend on sharding or worker count.
`normalize_frames` (CLIP mean/std) is separate so frames can stay uint8 until the device.

Resampling follows the official torchvision transforms on float tensors, i.e.
`torch.nn.functional.interpolate(mode, align_corners=False)` without antialiasing:
bilinear for the training crop (`crop_resize`, or Pillow's bicubic for
interpolation="bicubic", the earlier behaviour) and bicubic (a = -0.75) for the
evaluation resize (`resize_center_crop`). Outputs are rounded to uint8: within 0.5 of
torch's values (x 255) where those lie in [0, 255], clipped where bicubic overshoots.

Layer: data (imports `frame_store`, `sampling`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from ps_jax.data import frame_store, sampling

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bilinear", "bicubic")
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


def _taps(in_size: int, out_size: int, mode: str, start: int = 0,
          count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Source pixels and weights of output pixels [start, start + count) along one axis.

  torch's `interpolate(align_corners=False)` without antialiasing: output pixel d reads
  around x = (d + 0.5) * in / out - 0.5; bilinear clamps x at 0 and mixes pixels floor(x)
  and floor(x) + 1; bicubic mixes floor(x) - 1 .. floor(x) + 2 with Keys' cubic
  (a = -0.75). Pixel indices are clamped to the border. As in torch's CPU kernels for
  float tensors, the scale is a float32 and x is rounded once to float32 (float64
  positions would move some outputs by up to ~0.005 on the 0..255 scale).

  Returns:
    (index int64[count, taps], weight float32[count, taps]), taps = 2 or 4.
  """
  count = out_size - start if count is None else count
  f32 = np.float32
  scale = np.float64(f32(in_size) / f32(out_size))
  x = ((np.arange(start, start + count) + 0.5) * scale - 0.5).astype(f32)
  if mode == "bilinear":
    x = np.maximum(x, f32(0.0))
    base = np.floor(x)
    frac = (x - base)[:, None]
    offsets = np.arange(2)
    weight = np.concatenate([f32(1.0) - frac, frac], axis=1)
  elif mode == "bicubic":
    base = np.floor(x)
    t = (x - base)[:, None]
    offsets = np.arange(-1, 3)
    dist = np.abs(t - offsets)  # distances to the 4 taps, in [0, 2]
    a = -0.75
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    weight = np.where(dist <= 1, near, far)
  else:
    raise ValueError(f"interpolation {mode!r} is not one of {INTERPOLATIONS}")
  index = np.clip(base.astype(np.int64)[:, None] + offsets, 0, in_size - 1)
  return index, weight.astype(np.float32)


def _apply_taps(x: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
  """sum_k weight[:, k] * x.take(index[:, k], axis): float32, resampled along `axis`."""
  shape = [1] * x.ndim
  shape[axis] = len(index)
  out = np.zeros(x.shape[:axis] + (len(index),) + x.shape[axis + 1:], np.float32)
  for k in range(index.shape[1]):
    out += x.take(index[:, k], axis=axis) * weight[:, k].reshape(shape)
  return out


def torch_resize(frames: np.ndarray, out_h: int, out_w: int, mode: str,
                 rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
  """torch's interpolate(frames, (out_h, out_w), mode, align_corners=False), rounded.

  Args:
    frames: uint8[T, H, W, 3].
    out_h, out_w: the resized size.
    mode: "bilinear" or "bicubic".
    rows, cols: (start, count) to compute only a window of the resized frames.

  Returns:
    uint8[T, rows count, cols count, 3], rounded to nearest and clipped to [0, 255].
  """
  t, h, w, _ = frames.shape
  r0, rn = rows or (0, out_h)
  c0, cn = cols or (0, out_w)
  out = _apply_taps(frames.astype(np.float32), *_taps(h, out_h, mode, r0, rn), axis=1)
  out = _apply_taps(out, *_taps(w, out_w, mode, c0, cn), axis=2)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], size: int,
                interpolation: str = "bilinear") -> np.ndarray:
  """Crops (top, left, h, w) from every frame and resizes it to size x size.

  Args:
    frames: uint8[T, H, W, 3].
    box: the crop, in pixels.
    size: output side S.
    interpolation: "bilinear" (torch, as the official RandomResizedCrop on tensors) or
      "bicubic" (Pillow, antialiased when shrinking: ps_jax's earlier crop).

  Returns:
    uint8[T, size, size, 3].
  """
  top, left, h, w = box
  if (top, left, h, w) == (0, 0, size, size) == (0, 0, *frames.shape[1:3]):
    return frames  # the whole frame at its own size: both resamplers copy it
  if interpolation == "bilinear":
    return torch_resize(frames[:, top:top + h, left:left + w], size, size, "bilinear")
  if interpolation != "bicubic":
    raise ValueError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
  pil_box = (left, top, left + w, top + h)
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for i, frame in enumerate(frames):
    out[i] = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC,
                                                      box=pil_box))
  return out


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """The official test transform: bicubic resize of the short side to `size`, centre crop.

  torchvision's Resize(size, bicubic) on tensors (torch bicubic, no antialiasing; the
  long side becomes int(size * long / short); a short side already equal to `size` is
  left alone) then CenterCrop(size) (offsets round((side - size) / 2)). Only the crop
  window is computed.

  Args:
    frames: uint8[T, H, W, 3].

  Returns:
    uint8[T, size, size, 3].
  """
  _, h, w, _ = frames.shape
  if h <= w:
    new_h, new_w = size, max(size, int(size * w / h))
  else:
    new_h, new_w = max(size, int(size * h / w)), size
  top = int(round((new_h - size) / 2.0))
  left = int(round((new_w - size) / 2.0))
  if min(h, w) == size:
    return np.ascontiguousarray(frames[:, top:top + size, left:left + size])
  return torch_resize(frames, new_h, new_w, "bicubic", (top, size), (left, size))


class SampleFrames(grain.transforms.Map):
  """Chunked rand/uniform sampling -> frames uint8[F, H, W, 3].

  Reads element["video"] (a `frame_store.StoredVideo`: indices drawn on its source
  count, only the sampled frames decoded) or, without it, element["frames"]
  uint8[K, H, W, 3] (indices drawn among those K frames).
  """

  def __init__(self, num_frames: int, num_prompts: int, mode: str):
    sampling.sample_frame_indices(num_prompts, num_frames, num_prompts, "uniform")  # check
    self.num_frames, self.num_prompts, self.mode = num_frames, num_prompts, mode

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    video = element.get("video")
    if video is None:
      video = frame_store.StoredVideo(len(element["frames"]),
                                      np.arange(len(element["frames"])), element["frames"])
    frames = frame_store.sample_clip(video, self.num_frames, self.num_prompts, self.mode,
                                     element.get("rng"))
    return {k: v for k, v in element.items() if k != "video"} | {"frames": frames}


class RandomResizedCropFlip(grain.transforms.Map):
  """One RandomResizedCrop box and one horizontal flip shared by all frames of a clip.

  frames uint8[F, H, W, 3] -> uint8[F, size, size, 3]; draws from element["rng"];
  `interpolation` as in `crop_resize` ("bilinear": official).
  """

  def __init__(self, size: int, scale: Sequence[float] = (0.5, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
               interpolation: str = "bilinear"):
    if interpolation not in INTERPOLATIONS:
      raise ValueError(f"crop interpolation {interpolation!r} is not one of "
                       f"{INTERPOLATIONS}")
    self.size, self.scale, self.ratio, self.flip_prob = size, tuple(scale), tuple(ratio), flip_prob
    self.interpolation = interpolation

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    frames, rng = element["frames"], element["rng"]
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng, self.scale,
                                  self.ratio)
    out = crop_resize(frames, box, self.size, self.interpolation)
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
