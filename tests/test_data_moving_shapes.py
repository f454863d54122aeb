"""moving_shapes: reverse twins, determinism, captions, vocabulary and .mp4 export."""

import dataclasses
import json

import numpy as np
import pytest

from ps_jax import tokenizer as tok_lib
from ps_jax.data import moving_shapes as M
from ps_jax.data import video as V

TINY = M.SIZES["tiny"]


def test_reverse_twins_have_the_same_frame_set():
  clips = list(M.iter_clips(TINY, "train"))
  assert len(clips) == TINY.num_train == 16
  for fwd, rev in zip(clips[::2], clips[1::2]):
    assert fwd.twin_id == rev.video_id and rev.twin_id == fwd.video_id
    np.testing.assert_array_equal(rev.frames, fwd.frames[::-1])
    # Same multiset of frames, so any order-free pooling (mean, max, set) is identical...
    assert sorted(f.tobytes() for f in fwd.frames) == sorted(f.tobytes() for f in rev.frames)
    np.testing.assert_array_equal(fwd.frames.astype(np.int64).sum(0),
                                  rev.frames.astype(np.int64).sum(0))
    # ...but the clips differ frame by frame, and their events are opposite.
    assert not np.array_equal(fwd.frames, rev.frames)
    assert rev.events == tuple(M.OPPOSITE[e] for e in fwd.events)
    assert (fwd.colours, fwd.kinds) == (rev.colours, rev.kinds)
    for cap in rev.captions:
      assert any(w in cap for w in M.PHRASES[rev.events[0]])
      assert not any(p in cap for p in M.PHRASES[fwd.events[0]] if p not in
                     M.PHRASES[rev.events[0]])


def test_motion_really_happens():
  """The shape's centre of mass moves the way the event says."""
  cfg = dataclasses.replace(TINY, noise_std=0.0)
  checked = set()
  for clip in M.iter_clips(cfg, "train"):
    colour = np.asarray(M.COLOURS[clip.colours[0]], float)
    dist = np.abs(clip.frames.astype(float) - colour).sum(-1)
    mask = dist < 30
    ys, xs = np.mgrid[:cfg.image_size, :cfg.image_size]
    area = mask.sum((1, 2))
    cx = (mask * xs).sum((1, 2)) / np.maximum(area, 1)
    cy = (mask * ys).sum((1, 2)) / np.maximum(area, 1)
    event = clip.events[0]
    delta = {"right": cx[-1] - cx[0], "left": cx[0] - cx[-1], "down": cy[-1] - cy[0],
             "up": cy[0] - cy[-1], "grows": area[-1] - area[0],
             "shrinks": area[0] - area[-1]}[event]
    assert delta > (3 if event in ("grows", "shrinks") else 0.25 * cfg.image_size), clip
    checked.add(event)
  assert len(checked) >= 4


def test_deterministic_and_seeded():
  a = list(M.iter_clips(TINY, "test"))
  b = list(M.iter_clips(TINY, "test"))
  for x, y in zip(a, b):
    assert x.video_id == y.video_id and x.captions == y.captions
    np.testing.assert_array_equal(x.frames, y.frames)
  other = list(M.iter_clips(dataclasses.replace(TINY, seed=1), "test"))
  assert not np.array_equal(a[0].frames, other[0].frames)
  # Clip i does not depend on how many clips the split has.
  bigger = list(M.iter_clips(dataclasses.replace(TINY, num_test=12), "test"))
  np.testing.assert_array_equal(bigger[3].frames, a[3].frames)
  assert a[0].frames.shape == (8, 32, 32, 3) and a[0].frames.dtype == np.uint8
  assert len(a[0].captions) == 3 and len(set(a[0].captions)) == 3
  assert a[0].frames.std() > 5  # noisy gradient background, not flat


def test_demo_size_and_two_shapes():
  demo = M.SIZES["demo"]
  assert (demo.num_train, demo.num_val, demo.num_test, demo.num_frames, demo.image_size) == (
      384, 96, 160, 12, 32)
  two = dataclasses.replace(TINY, shapes_per_clip=2)
  clip = next(M.iter_clips(two, "val"))
  assert len(clip.events) == 2 and all(f" {M.CONJUNCTION} " in c for c in clip.captions)
  with pytest.raises(ValueError, match="num_train"):
    dataclasses.replace(TINY, num_train=3).validate()


def test_vocabulary_covers_every_caption():
  tok = M.make_tokenizer()
  assert tok.eos_id == tok.vocab_size - 1 and tok.vocab_size == len(M.vocabulary()) + 3
  two = dataclasses.replace(TINY, shapes_per_clip=2)
  for cfg in (TINY, two):
    for split in M.SPLITS:
      for clip in M.iter_clips(cfg, split):
        for cap in clip.captions:
          ids = tok.encode(cap)
          assert tok.unk_id not in ids and tok.decode(ids) == cap


def test_write_mp4_dataset(tmp_path):
  cfg = dataclasses.replace(TINY, num_train=2, num_val=0, num_test=2)
  anno = M.write_mp4_dataset(str(tmp_path), cfg)
  assert [c["video_id"] for c in anno["splits"]["train"]] == ["train00000f", "train00000r"]
  assert json.loads((tmp_path / M.ANNOTATION_FILE).read_text()) == anno
  assert M.read_annotations(str(tmp_path))["test"][1][0] == "test00000r"
  vocab = tok_lib.load_tokenizer(str(tmp_path / M.VOCAB_FILE))
  assert vocab.words == M.vocabulary()
  clip = next(M.iter_clips(cfg, "train"))
  decoded = V.decode_video(str(tmp_path / "videos" / "train00000f.mp4"), num_frames=32,
                           short_side=None)
  assert decoded.frames.shape == clip.frames.shape
  err = np.abs(decoded.frames.astype(int) - clip.frames.astype(int)).mean()
  assert err < 8, err  # lossy but close
