"""HF <-> Flax weight layouts: bit-exact round trip and errors that name the tensor."""

import os
import pickle
import re

import jax
import numpy as np
import pytest
import safetensors.numpy

import ps_jax
from ps_jax import convert, experiment, index_videos
from train_fixtures import tiny_config, tiny_model


def test_round_trip_is_bit_exact(hf_clip_dirs, tmp_path):
  src = hf_clip_dirs["b"]
  config, params = convert.load_hf_clip(src)
  convert.save_hf_clip(params, config, str(tmp_path))
  before = safetensors.numpy.load_file(os.path.join(src, "model.safetensors"))
  after = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  before = {k: v for k, v in before.items() if not k.endswith("position_ids")}
  assert sorted(before) == sorted(after)
  for name, value in before.items():
    assert after[name].dtype == value.dtype, name
    np.testing.assert_array_equal(after[name], value, err_msg=name)
  # ... and the written directory loads again into the same Flax tree.
  _, again = convert.load_hf_clip(str(tmp_path))
  flat = lambda t: {"/".join(p): v for p, v in convert._shape_tree_paths(t)}  # pylint: disable=protected-access
  assert flat(again) == flat(params)


def _write_modified(src, dst, edit):
  tensors = dict(safetensors.numpy.load_file(os.path.join(src, "model.safetensors")))
  edit(tensors)
  os.makedirs(dst, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(dst, "model.safetensors"))
  with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
    g.write(f.read())
  return dst


def test_missing_unexpected_and_misshaped_tensors_are_all_named(hf_clip_dirs, tmp_path):
  def edit(t):
    del t["vision_model.encoder.layers.1.mlp.fc2.bias"]
    del t["text_projection.weight"]
    t["vision_model.extra.weight"] = np.zeros(3, np.float32)
    t["text_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((32, 31), np.float32)
    t["visual_projection.weight"] = np.zeros((25, 48), np.float32)

  bad = _write_modified(hf_clip_dirs["a"], str(tmp_path / "bad"), edit)
  with pytest.raises(convert.LayoutError) as err:
    convert.load_hf_clip(bad)
  msg = str(err.value)
  assert "model.safetensors" in msg
  assert "missing: vision_model.encoder.layers.1.mlp.fc2.bias" in msg
  assert "missing: text_projection.weight" in msg
  assert "unexpected: vision_model.extra.weight" in msg
  assert ("wrong shape: text_model.encoder.layers.0.self_attn.q_proj.weight: expected shape "
          "(32, 32), got (32, 31)") in msg
  assert "wrong shape: visual_projection.weight: expected shape (24, 48), got (25, 48)" in msg


def test_missing_weights_file_says_what_to_do(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    convert.load_hf_clip(str(tmp_path))


def test_corrupt_safetensors_is_a_clear_error(hf_clip_dirs, tmp_path):
  bad = _write_modified(hf_clip_dirs["a"], str(tmp_path / "c"), lambda t: None)
  with open(os.path.join(bad, "model.safetensors"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="Cannot read safetensors file"):
    convert.load_hf_clip(bad)


class _RunsCodeWhenUnpickled:
  """What a malicious checkpoint holds: unpickling it calls os.mkdir(marker)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pth_holding_a_pickled_object_is_refused_and_not_run(tmp_path, capsys, writer):
  """Through the library, `ps_jax.index_videos --model` (exit 2, one line) and a run's
  config.model.init_from: each error names the file, and the object is never built."""
  torch = pytest.importorskip("torch")
  marker, path = str(tmp_path / "the_code_ran"), str(tmp_path / "model_best.pth")
  payload = {"state_dict": _RunsCodeWhenUnpickled(marker)}
  if writer == "torch.save":
    torch.save(payload, path)
  else:
    with open(path, "wb") as f:
      pickle.dump(payload, f, protocol=2)  # torch's legacy (non-zip) format
  message = (f"Cannot read {path!r} as a weights-only PyTorch checkpoint (tensors and plain "
             "containers; nothing else is unpickled): ")
  with pytest.raises(convert.CheckpointReadError, match=re.escape(message) + ".*posix.mkdir"):
    convert.read_official_checkpoint(path)
  with pytest.raises(convert.CheckpointReadError, match=re.escape(message)):
    ps_jax.load_model(path)
  (tmp_path / "videos").mkdir()
  (tmp_path / "videos" / "clip.mp4").write_bytes(b"")
  assert index_videos.main(["--model", path, "--video_dir", str(tmp_path / "videos"),
                            "--out", str(tmp_path / "index"), "--no_progress"]) == 2
  assert capsys.readouterr().err.startswith(f"error: {message}")
  config = tiny_config(**{"model.init_from": path})
  with pytest.raises(experiment.ConfigError, match=re.escape("config.model.init_from: "
                                                             + message)):
    experiment.initial_params(config, tiny_model(), jax.random.PRNGKey(0))
  assert not os.path.exists(marker) and not (tmp_path / "index").exists()
  with open(path, "rb") as f:  # what an unrestricted load would have done
    torch.load(f, weights_only=False) if writer == "torch.save" else pickle.load(f)
  assert os.path.isdir(marker)
