"""Per-example transforms: crops shared by a clip, centre crops, tokenization, normalisation."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax import tokenizer as tok_lib
from ps_jax.data import transforms as T
from ps_jax.tokenizer import WordTokenizer


def _gradient_clip(t=4, h=40, w=60):
  """Every frame the same horizontal ramp, plus a per-frame brightness offset."""
  ramp = np.linspace(0, 200, w).astype(np.uint8)[None, :, None]
  frames = np.broadcast_to(ramp, (t, h, w, 3)).copy()
  frames += (10 * np.arange(t, dtype=np.uint8))[:, None, None, None]
  return frames


def test_normalize_frames_numpy_and_jit():
  frames = np.array([[[0, 0, 0], [255, 255, 255], [123, 117, 104]]], np.uint8)
  out = T.normalize_frames(frames)
  assert out.dtype == np.float32 and isinstance(out, np.ndarray)
  mean, std = np.array(T.CLIP_MEAN), np.array(T.CLIP_STD)
  np.testing.assert_allclose(out[0, 0], -mean / std, rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], (1 - mean) / std, rtol=1e-6)
  np.testing.assert_allclose(out[0, 2], (frames[0, 2] / 255 - mean) / std, rtol=1e-6, atol=1e-6)
  on_device = jax.jit(T.normalize_frames)(jnp.asarray(frames))
  assert on_device.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(on_device), out, rtol=1e-6, atol=1e-6)


def test_random_resized_crop_box_ranges():
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(500):
    top, left, h, w = T.random_resized_crop_box(256, 455, rng)
    assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 455
    areas.append(h * w / (256 * 455))
    ratios.append(w / h)
  assert 0.48 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.6
  assert 0.74 <= min(ratios) and max(ratios) <= 1.35
  # Impossible ratio constraints fall back to a centre crop with the ratio clamped.
  assert T.random_resized_crop_box(10, 100, rng, scale=(0.99, 1.0), ratio=(1.0, 1.0)) == (
      0, 45, 10, 10)


def test_one_crop_and_one_flip_per_clip():
  frames = _gradient_clip()
  crop = T.RandomResizedCropFlip(16)
  flips = set()
  for seed in range(12):
    out = crop.map({"frames": frames, "rng": np.random.default_rng(seed)})["frames"]
    assert out.shape == (4, 16, 16, 3) and out.dtype == np.uint8
    base = out.astype(int) - (10 * np.arange(4))[:, None, None, None]
    for t in range(1, 4):  # identical geometry in every frame of the clip
      np.testing.assert_allclose(base[t], base[0], atol=1)
    row = out[0, 8, :, 0].astype(int)
    assert (np.diff(row) >= -1).all() or (np.diff(row) <= 1).all()  # still a monotone ramp
    flips.add(bool(row[0] > row[-1]))
  assert flips == {True, False}  # both flipped and unflipped clips occur
  a = crop.map({"frames": frames, "rng": np.random.default_rng(3)})["frames"]
  b = crop.map({"frames": frames, "rng": np.random.default_rng(3)})["frames"]
  np.testing.assert_array_equal(a, b)


def test_resize_center_crop():
  frames = _gradient_clip(t=2, h=40, w=60)
  out = T.ResizeCenterCrop(20).map({"frames": frames})["frames"]
  assert out.shape == (2, 20, 20, 3)
  # Short side 40 -> 20 (width 60 -> 30), then the central 20 columns: ramp 1/6..5/6.
  row = out[0, 10, :, 0].astype(float)
  assert 30 < row[0] < 45 and 155 < row[-1] < 170
  tall = np.zeros((1, 50, 20, 3), np.uint8)
  tall[:, :15] = 255  # top rows cut by the centre crop
  assert T.resize_center_crop(tall, 10).shape == (1, 10, 10, 3)
  assert T.resize_center_crop(tall, 10)[0, 0, 0, 0] == 0


def test_sample_frames_and_tokenize():
  frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  out = T.SampleFrames(6, 3, "uniform").map({"frames": frames})["frames"]
  np.testing.assert_array_equal(out[:, 0, 0, 0], [0, 3, 7, 0, 3, 8])
  with pytest.raises(ValueError, match="multiple"):
    T.SampleFrames(5, 3, "uniform")
  tok = WordTokenizer(["a", "red", "circle", "moves", "left"])
  e = T.TokenizeCaption(tok, 5).map({"caption": "a red circle moves left"})
  # Truncated to 5: BOS, 3 words, EOS (EOS kept).
  np.testing.assert_array_equal(e["input_ids"], [tok.bos_id, 1, 2, 3, tok.eos_id])
  np.testing.assert_array_equal(e["attention_mask"], [1, 1, 1, 1, 1])
  e = T.TokenizeCaption(tok, 6).map({"caption": "a circle"})
  np.testing.assert_array_equal(e["input_ids"], [tok.bos_id, 1, 3, tok.eos_id, tok.eos_id,
                                                 tok.eos_id])
  np.testing.assert_array_equal(e["attention_mask"], [1, 1, 1, 1, 0, 0])
  assert e["input_ids"].dtype == np.int32


def test_tokenize_caption_with_clip_bpe(tmp_path):
  bpe = Path(__file__).resolve().parents[2] / "shared" / "data" / "clip" / \
      "bpe_simple_vocab_16e6.txt.gz"
  tok_lib.write_clip_tokenizer_files(str(bpe), str(tmp_path))
  tok = tok_lib.load_tokenizer(str(tmp_path))
  e = T.TokenizeCaption(tok, 8).map(
      {"caption": "a person is connecting something to the system with a long cable"})
  ids = e["input_ids"]
  assert ids[0] == tok.bos_id == 49406 and ids[-1] == tok.eos_id == 49407
  assert ids.argmax() == 7 and e["attention_mask"].sum() == 8  # pooled at the kept EOT
  short = T.TokenizeCaption(tok, 8).map({"caption": "a cat"})
  assert short["input_ids"].argmax() == 3 and short["attention_mask"].tolist() == [1] * 4 + [0] * 4


def test_whole_frame_crop_is_the_identity_pil_would_give():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
  out = T.crop_resize(frames, (0, 0, 16, 16), 16)
  np.testing.assert_array_equal(out, frames)
  # The generic path (PIL's bicubic over the whole frame at the same size) agrees.
  from PIL import Image
  for t in range(3):
    np.testing.assert_array_equal(
        np.asarray(Image.fromarray(frames[t]).resize((16, 16), Image.BICUBIC,
                                                     box=(0, 0, 16, 16))), frames[t])
  # crop_scale = crop_ratio = (1, 1) on square frames: no augmentation at all.
  crop = T.RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
  for seed in range(5):
    np.testing.assert_array_equal(
        crop.map({"frames": frames, "rng": np.random.default_rng(seed)})["frames"], frames)
  # A real crop still resizes.
  assert not np.array_equal(T.crop_resize(frames, (2, 2, 12, 12), 16), frames)


# ----------------------------------------------------------------------------- torch


def _natural_frames(rng, t, h, w):
  """Smooth gradients plus texture and noise: edges for the kernels to disagree on."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = 127 + 90 * np.sin(x / 17.0)[..., None] * np.cos(y / 23.0)[..., None]
  frames = base[None] + rng.normal(0, 30, size=(t, h, w, 3))
  frames[:, h // 3:h // 2, w // 4:w // 2] = 255.0  # a saturated block: bicubic overshoots
  frames[:, h // 2:, :w // 5] = 0.0
  return np.clip(frames, 0, 255).astype(np.uint8)


def _torch_interpolate(frames, size, mode):
  """The official transforms' resampling: float tensors frames / 255, NCHW, x 255 back."""
  torch = pytest.importorskip("torch")
  x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
  y = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False,
                                      antialias=False)
  return y.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255.0


# Tolerance: ours is torch's value rounded to uint8, so |ours - torch| <= 0.5 (+ float32
# rounding, < 1e-3 here) wherever torch stays in [0, 255]; bicubic overshoot beyond is
# clipped (the official float pipeline keeps it), so compare with torch clipped.
_TOL = 0.5 + 1e-3


@pytest.mark.parametrize("shape,size", [((224, 398), 224), ((240, 320), 224),
                                        ((256, 455), 224), ((37, 53), 16)])
def test_bilinear_crop_matches_torch_interpolate(shape, size):
  rng = np.random.default_rng(sum(shape))
  frames = _natural_frames(rng, 3, *shape)
  for _ in range(6):
    top, left, h, w = T.random_resized_crop_box(*shape, rng)
    ours = T.crop_resize(frames, (top, left, h, w), size, "bilinear")
    ref = _torch_interpolate(frames[:, top:top + h, left:left + w], (size, size), "bilinear")
    assert ours.shape == (3, size, size, 3) and ours.dtype == np.uint8
    diff = np.abs(ours - ref)
    assert diff.max() <= _TOL, (top, left, h, w, diff.max())
    assert diff.mean() < 0.3  # rounding error, not a shifted grid
  # Strong up- and down-scaling of a small box.
  for box in [(3, 5, 7, 9), (0, 0, shape[0], shape[1]), (1, 2, shape[0] - 1, shape[1] - 3)]:
    ours = T.crop_resize(frames, box, size, "bilinear")
    top, left, h, w = box
    ref = _torch_interpolate(frames[:, top:top + h, left:left + w], (size, size), "bilinear")
    assert np.abs(ours - ref).max() <= _TOL


def test_bicubic_crop_is_the_earlier_pillow_crop():
  from PIL import Image
  frames = _natural_frames(np.random.default_rng(2), 2, 40, 60)
  box = (3, 7, 30, 41)
  out = T.crop_resize(frames, box, 24, "bicubic")
  for t in range(2):
    np.testing.assert_array_equal(out[t], np.asarray(Image.fromarray(frames[t]).resize(
        (24, 24), Image.BICUBIC, box=(7, 3, 48, 33))))
  with pytest.raises(ValueError, match="interpolation 'nearest'"):
    T.crop_resize(frames, box, 24, "nearest")
  with pytest.raises(ValueError, match="crop interpolation 'area'"):
    T.RandomResizedCropFlip(24, interpolation="area")


def test_eval_resize_center_crop_matches_torch():
  rng = np.random.default_rng(7)
  # Short side already 224 (the stored size): Resize is the identity, an exact crop.
  frames = _natural_frames(rng, 2, 224, 398)
  np.testing.assert_array_equal(T.resize_center_crop(frames, 224), frames[:, :, 87:311])
  tall = _natural_frames(rng, 1, 300, 224)
  np.testing.assert_array_equal(T.resize_center_crop(tall, 224), tall[:, 38:262])
  # Otherwise: torch bicubic to (224, int(224 * long / short)), then the centre crop.
  for shape in [(256, 455), (240, 320), (160, 213), (341, 256)]:
    frames = _natural_frames(rng, 2, *shape)
    h, w = shape
    new = (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)
    ref = _torch_interpolate(frames, new, "bicubic")
    top, left = int(round((new[0] - 224) / 2)), int(round((new[1] - 224) / 2))
    ref = np.clip(ref[:, top:top + 224, left:left + 224], 0, 255)
    ours = T.resize_center_crop(frames, 224)
    assert ours.shape == (2, 224, 224, 3)
    assert np.abs(ours - ref).max() <= _TOL, shape
