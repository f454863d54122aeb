"""grain pipelines on a small prepared dataset whose pixels say which video and frame they are.

Frame t of video v is the constant colour (R, G, B) = (12 v + 6, 16 t + 8, 100); crops and
resizes keep constant frames constant, so every output frame can be traced back.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ps_jax.data import builders
from ps_jax.data import pipeline
from ps_jax.data import prepare
from ps_jax.data import sampling
from ps_jax.tokenizer import WordTokenizer

REPO = Path(__file__).resolve().parents[1]
TRAIN_CAPTIONS = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 2]  # 28 pairs, 12 videos
TRAIN_FRAMES = [8, 8, 8, 8, 8, 3, 8, 8, 6, 8, 8, 8]  # video 5 is shorter than the prompts
TEST_CAPTIONS = [2, 1, 1, 2, 1]
NAME = "synthetic"


def _frames(v, n):
  f = np.empty((n, 24, 36, 3), np.uint8)
  f[..., 0] = 12 * v + 6
  f[..., 1] = (16 * np.arange(n) + 8)[:, None, None]
  f[..., 2] = 100
  return f


def _caption(v, k):
  return f"clip {v} caption {k}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("pipeline_data")

  def videos(captions, frames, offset):
    return [builders.PlannedVideo(
        f"vid{offset + i}", tuple(_caption(offset + i, k) for k in range(c)),
        lambda v=offset + i, n=n: (_frames(v, n), np.arange(n, dtype=np.int32), n))
            for i, (c, n) in enumerate(zip(captions, frames))]

  prepare.write_dataset(str(out), NAME, {
      "train": videos(TRAIN_CAPTIONS, TRAIN_FRAMES, 0),
      "test": videos(TEST_CAPTIONS, [8] * len(TEST_CAPTIONS), 12)}, progress=False)
  return str(out)


@pytest.fixture(scope="module")
def tok():
  return WordTokenizer(["clip", "caption"] + [str(i) for i in range(20)])


def _loader(data_dir, tok, **kw):
  args = dict(tokenizer=tok, global_batch_size=4, num_frames=6, num_prompts=3, image_size=8,
              max_len=7, seed=0, shard_index=0, shard_count=1)
  args.update(kw)
  return pipeline.make_train_loader(data_dir, NAME, "train", **args)


def _identify(batch, tok):
  """-> video of the frames [b], frame indices [b, F], (video, caption) of the text [b]."""
  px = batch["frames"][:, :, 4, 4].astype(int)  # [b, F, 3]
  videos = np.round((px[:, :, 0] - 6) / 12).astype(int)
  assert (videos == videos[:, :1]).all()  # one video per clip
  frames = np.round((px[:, :, 1] - 8) / 16).astype(int)
  words = [tok.decode(ids).split() for ids in batch["input_ids"]]
  pairs = [(int(w[1]), int(w[3])) for w in words]
  return videos[:, 0], frames, pairs


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_batches_layout_and_content(data_dir, tok):
  loader = _loader(data_dir, tok, num_epochs=1)
  assert (loader.steps_per_epoch, loader.num_pairs, loader.pairs_per_epoch) == (7, 28, 28)
  assert loader.num_videos == 12 and loader.local_batch_size == 4
  batches = list(loader)
  assert len(batches) == 7
  for b in batches:
    assert b["frames"].shape == (4, 6, 8, 8, 3) and b["frames"].dtype == np.uint8
    assert b["input_ids"].shape == (4, 7) and b["input_ids"].dtype == np.int32
    assert b["attention_mask"].dtype == np.int32 and set(b) == {"frames", "input_ids",
                                                                  "attention_mask"}
    videos, frames, pairs = _identify(b, tok)
    assert [v for v, _ in pairs] == list(videos)  # the caption belongs to the clip's video
    for v, idx in zip(videos, frames):  # chunk-major `rand` sampling, segment by segment
      bounds = sampling.segment_bounds(TRAIN_FRAMES[v], 3)
      for c in range(2):
        chunk = idx[3 * c:3 * c + 3]
        assert ((bounds[:, 0] <= chunk) & (chunk <= bounds[:, 1])).all(), (v, idx)
    assert (b["attention_mask"].sum(1) == 6).all()  # BOS + 4 words + EOS


def test_every_pair_once_per_epoch_and_no_video_twice_in_a_batch(data_dir, tok):
  batches = list(_loader(data_dir, tok, num_epochs=3, seed=7))
  assert len(batches) == 21
  epochs = []
  for e in range(3):
    seen = []
    for b in batches[7 * e:7 * e + 7]:
      videos, _, pairs = _identify(b, tok)
      assert len(set(videos.tolist())) == 4  # distinct videos in every batch
      seen += pairs
    assert sorted(seen) == sorted((v, k) for v, c in enumerate(TRAIN_CAPTIONS)
                                  for k in range(c))
    epochs.append(seen)
  assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch


def test_groups_share_a_batch_and_flip_can_be_disabled(data_dir, tok):
  """group_size=2: videos 2k and 2k+1 (e.g. a clip and its reversed twin) always come
  together, with the same caption index (groups use min(captions) of their members)."""
  loader = _loader(data_dir, tok, num_epochs=2, group_size=2, flip_prob=0.0, seed=3)
  group_counts = [min(TRAIN_CAPTIONS[i], TRAIN_CAPTIONS[i + 1]) for i in range(0, 12, 2)]
  assert loader.steps_per_epoch == sum(group_counts) // 2
  seen = []
  for b in loader:
    videos, frames, pairs = _identify(b, tok)
    assert len(set(videos.tolist())) == 4
    by_video = dict(zip(videos.tolist(), [k for _, k in pairs]))
    for v in videos:
      assert by_video[v ^ 1] == by_video[v]  # twin present, same caption index
    seen += pairs
  assert len(seen) == 2 * 4 * loader.steps_per_epoch  # 2 epochs of 4-clip batches
  # No flip: frame columns keep their left-to-right order (the synthetic frames are
  # constant across columns, so check the crop box instead through a real gradient).
  grad = np.zeros((1, 1, 24, 36, 3), np.uint8)
  grad[..., 0] = np.arange(36, dtype=np.uint8)[None, None, None, :] * 7
  from ps_jax.data import transforms  # pylint: disable=g-import-not-at-top
  crop = transforms.RandomResizedCropFlip(8, flip_prob=0.0)
  for seed in range(5):
    out = crop.map({"frames": grad[0], "rng": np.random.default_rng(seed)})["frames"]
    assert (np.diff(out[0, 4, :, 0].astype(int)) >= 0).all()
  with pytest.raises(ValueError, match="group_size=5"):
    _loader(data_dir, tok, group_size=5)


def test_same_seed_same_batches_any_worker_count(data_dir, tok):
  a = _take(iter(_loader(data_dir, tok)), 9)  # crosses the first epoch boundary
  b = _take(iter(_loader(data_dir, tok)), 9)
  c = _take(iter(_loader(data_dir, tok, seed=1)), 9)
  loader = _loader(data_dir, tok, worker_count=2)
  it = iter(loader)
  d = _take(it, 9)
  it.close()
  for x, y, z in zip(a, b, d):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
      np.testing.assert_array_equal(x[k], z[k])
  assert any(not np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c))


def test_process_shards_are_disjoint_and_cover_the_global_batch(data_dir, tok):
  whole = _take(iter(_loader(data_dir, tok)), 5)
  parts = [_take(iter(_loader(data_dir, tok, shard_index=i, shard_count=2)), 5)
           for i in range(2)]
  for t in range(5):
    assert parts[0][t]["frames"].shape[0] == 2
    for k in whole[t]:
      np.testing.assert_array_equal(np.concatenate([parts[0][t][k], parts[1][t][k]]),
                                    whole[t][k])
    v0, v1 = _identify(parts[0][t], tok)[0], _identify(parts[1][t], tok)[0]
    assert not set(v0.tolist()) & set(v1.tolist())


_RESTORE = """
import json, sys
import numpy as np
from ps_jax.data import pipeline
from ps_jax.tokenizer import WordTokenizer
data_dir, state_path, out_path = sys.argv[1:]
tok = WordTokenizer(["clip", "caption"] + [str(i) for i in range(20)])
loader = pipeline.make_train_loader(
    data_dir, "synthetic", "train", tokenizer=tok, global_batch_size=4, num_frames=6,
    num_prompts=3, image_size=8, max_len=7, seed=0, shard_index=0, shard_count=1)
it = iter(loader)
it.set_state(json.load(open(state_path)))
batches = [next(it) for _ in range(3)]
np.savez(out_path, **{f"{k}{i}": b[k] for i, b in enumerate(batches) for k in b})
"""


def test_iterator_state_restores_in_a_new_process(data_dir, tok, tmp_path):
  it = iter(_loader(data_dir, tok))
  _take(it, 5)  # mid-epoch (7 steps per epoch)
  state = it.get_state()
  expected = _take(it, 3)  # crosses into epoch 2
  (tmp_path / "state.json").write_text(json.dumps(state))
  script = tmp_path / "restore.py"
  script.write_text(_RESTORE)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  subprocess.run([sys.executable, str(script), data_dir, str(tmp_path / "state.json"),
                  str(tmp_path / "out.npz")], check=True, env=env, cwd=str(tmp_path),
                 capture_output=True, timeout=120)
  got = np.load(tmp_path / "out.npz")
  for i, b in enumerate(expected):
    for k in b:
      np.testing.assert_array_equal(got[f"{k}{i}"], b[k])


def test_eval_data(data_dir, tok):
  ev = pipeline.make_eval_data(data_dir, NAME, "test", tokenizer=tok, global_batch_size=2,
                               num_frames=6, num_prompts=3, image_size=8, max_len=7,
                               shard_index=0, shard_count=1)
  assert ev.num_videos == 5 and ev.num_batches == 3 and ev.local_batch_size == 2
  assert ev.video_ids == [f"vid{i}" for i in range(12, 17)]
  batches = list(ev)
  assert len(batches) == 3 and len(list(ev)) == 3  # iterable again
  index = np.concatenate([b["video_index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, -1])
  np.testing.assert_array_equal(mask, [True] * 5 + [False])
  assert batches[0]["frames"].shape == (2, 6, 8, 8, 3) and mask.dtype == bool
  assert index.dtype == np.int32 and (batches[2]["frames"][1] == 0).all()
  for b in batches:
    for i in np.flatnonzero(b["mask"]):
      px = b["frames"][i, :, 4, 4].astype(int)
      assert (np.round((px[:, 0] - 6) / 12) == 12 + b["video_index"][i]).all()
      # uniform, 8 frames, P = 3 ([0,1], [2,4], [5,7]), C = 2: steps (b - a) // 3 = 0.
      np.testing.assert_array_equal(np.round((px[:, 1] - 8) / 16), [0, 2, 5, 0, 2, 5])
  one_chunk = next(iter(pipeline.make_eval_data(
      data_dir, NAME, "test", tokenizer=tok, global_batch_size=2, num_frames=2, num_prompts=2,
      image_size=8, max_len=7, shard_index=0, shard_count=1)))
  # P = 2 ([0,3], [4,7]), C = 1: a + 3 // 2 = 1, 5.
  np.testing.assert_array_equal(np.round((one_chunk["frames"][:, :, 4, 4, 1] - 8) / 16),
                                [[1, 5], [1, 5]])
  assert ev.captions == [_caption(12 + v, k) for v, c in enumerate(TEST_CAPTIONS)
                         for k in range(c)]
  np.testing.assert_array_equal(ev.text_to_video, [0, 0, 1, 2, 3, 3, 4])
  assert ev.input_ids.shape == ev.attention_mask.shape == (7, 7)
  assert tok.decode(ev.input_ids[5]) == "clip 15 caption 1"
  halves = [list(pipeline.make_eval_data(
      data_dir, NAME, "test", tokenizer=tok, global_batch_size=2, num_frames=6, num_prompts=3,
      image_size=8, max_len=7, shard_index=i, shard_count=2)) for i in range(2)]
  for t in range(3):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][t]["video_index"], halves[1][t]["video_index"]]),
        batches[t]["video_index"])


def test_bad_arguments(data_dir, tok):
  with pytest.raises(ValueError, match="multiple of shard_count"):
    _loader(data_dir, tok, global_batch_size=3, shard_count=2)
  with pytest.raises(ValueError, match=r"Split 'val'.*available: \['test', 'train'\]"):
    pipeline.make_train_loader(data_dir, NAME, "val", tokenizer=tok, global_batch_size=2,
                               num_frames=3, num_prompts=3, image_size=8, max_len=7, seed=0,
                               shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="fewer than global_batch_size=16"):
    _loader(data_dir, tok, global_batch_size=16)
  with pytest.raises(builders.DatasetNotFoundError, match="msrvtt"):
    pipeline.make_train_loader(data_dir, "msrvtt", "train", tokenizer=tok, global_batch_size=2,
                               num_frames=3, num_prompts=3, image_size=8, max_len=7, seed=0,
                               shard_index=0, shard_count=1)


def test_distinct_video_batches_guarantees():
  rng = np.random.default_rng(0)
  for trial in range(100):
    counts = rng.integers(0, 9, size=int(rng.integers(1, 30)))
    if trial % 3 == 0:
      counts[0] = 40  # more captions than batches: the extra ones cannot fit an epoch
    g = int(rng.integers(1, 8))
    r = pipeline.batches_per_epoch(counts, g)
    assert np.minimum(counts, r + 1).sum() < (r + 1) * g  # R is the largest feasible
    if r == 0:
      with pytest.raises(ValueError, match="needs at least"):
        pipeline.distinct_video_batches(counts, g, 0, trial)
      continue
    order = pipeline.distinct_video_batches(counts, g, 0, trial)
    assert order.shape == (r, g, 2)
    assert all(len(set(b[:, 0].tolist())) == g for b in order)
    pairs = [tuple(p) for p in order.reshape(-1, 2).tolist()]
    assert len(set(pairs)) == r * g and all(k < counts[v] for v, k in pairs)
    np.testing.assert_array_equal(order, pipeline.distinct_video_batches(counts, g, 0, trial))
  # MSR-VTT shape: 9,000 videos x 20 captions, batch 32 -> every pair, 5,625 steps.
  order = pipeline.distinct_video_batches([20] * 9000, 32, seed=0, epoch=0)
  assert order.shape == (5625, 32, 2)
  assert len(np.unique(order[..., 0] * 20 + order[..., 1])) == 180000
  assert all(len(np.unique(b)) == 32 for b in order[..., 0])
