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
