"""`--mode eval` of weights that were never trained here (docs/reproducing.md, "MSR-VTT,
step by step", step 4).

Real MSVD test ids and captions (../shared/data) backed by small generated videos,
evaluated by the real command line from a tiny HF CLIP directory (its own CLIP BPE
tokenizer) and from an official-format `.pth` (no tokenizer inside: the user names
one). The reference numbers come from torch: `transformers.CLIPModel` with
`transformers.CLIPTokenizer`, and the independent torch transcription of the official
model, on the frames the evaluation pipeline hands to the model.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from conftest import (REPO, SHARED_DATA, randomize_torch_module,
                      tiny_hf_clip_real_vocab_config)
from ps_jax import metrics
from ps_jax import tokenizer as tokenizer_lib
from ps_jax.data import pipeline
from ps_jax.data import prepare as P
from ps_jax.data import video as V
from torch_prompt_switch import TorchPromptSwitch

MSVD = SHARED_DATA / "msvd"
TEST_IDS = ["eyhzdC936uk_15_27", "f-24IxG9ijw_25_40", "f9Won2JpOEU_60_80",
            "f9_bP219ehQ_63_70", "fBA_lxUiwSg_2_4"]
OTHER_IDS = {"train": "-4wsuPCjDBc_5_15", "val": "bQJQGoJF7_k_162_169"}
MAX_LEN = 32
NUM_PROMPTS = 6
CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)


def _hf_config() -> transformers.CLIPConfig:
  return tiny_hf_clip_real_vocab_config(MAX_LEN)


@pytest.fixture(scope="module")
def msvd_root(tmp_path_factory):
  """A prepared MSVD with 5 test videos (every caption of each), 1 train, 1 val."""
  root = tmp_path_factory.mktemp("zero_shot")
  rng = np.random.default_rng(0)
  (root / "videos").mkdir()
  for i, vid in enumerate(TEST_IDS + list(OTHER_IDS.values())):
    base = rng.integers(0, 256, (1, 8, 8, 3))  # a different coarse texture per video
    frames = np.repeat(np.repeat(base, 6, axis=1), 6, axis=2)[:, :40, :48]
    drift = np.arange(10)[:, None, None, None] * (i + 1)  # and its own motion
    frames = np.clip(frames + drift, 0, 255).astype(np.uint8)
    V.write_video(str(root / "videos" / f"{vid}.avi"), frames, codec="mpeg4")
  summary = P.prepare("msvd", out_dir=str(root / "data"), video_dir=str(root / "videos"),
                      anno_dir=str(MSVD), short_side=32, progress=False)
  assert summary.written == {"train": 1, "val": 1, "test": len(TEST_IDS)}
  return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("clip_tokenizer"))
  tokenizer_lib.write_clip_tokenizer_files(
      str(SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"), out)
  return out


def _run_eval(workdir, data_dir, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "ps_jax.main", "--config", "configs/msvd_vitb32.py",
       "--mode", "eval", "--workdir", str(workdir), f"--config.data.dir={data_dir}",
       "--config.data.image_size=32", f"--config.data.max_len={MAX_LEN}",
       "--config.eval_batch_size=2", "--config.data.eval_worker_count=0",
       # float32 compute: these runs are compared with transformers' float32 CLIP to 1e-6.
       "--config.model.dtype=float32", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _pipeline_frames(data_dir, num_prompts):
  """{video_index: uint8[F, 32, 32, 3]} and the captions, as `--mode eval` reads them."""
  data = pipeline.make_eval_data(
      str(data_dir), "msvd", "test", tokenizer=tokenizer_lib.WordTokenizer(["x"]),
      global_batch_size=2, num_frames=12, num_prompts=num_prompts, image_size=32,
      max_len=MAX_LEN, shard_index=0, shard_count=1)
  frames = {}
  for batch in data:
    for f, i, keep in zip(batch["frames"], batch["video_index"], batch["mask"]):
      if keep:
        frames[int(i)] = f
  return [frames[i] for i in range(data.num_videos)], data.captions, data.text_to_video


def _torch_pixels(frames):
  """uint8[F, S, S, 3] -> CLIP-normalised float32 [F, 3, S, S]."""
  x = (np.asarray(frames, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _torch_tokens(tokenizer_path, captions):
  tok = transformers.CLIPTokenizer.from_pretrained(tokenizer_path)
  enc = tok(captions, padding="max_length", max_length=MAX_LEN, truncation=True,
            return_tensors="pt")
  return enc["input_ids"], enc["attention_mask"]


def _metrics_record(text, video, text_to_video):
  result = metrics.retrieval_metrics(metrics.similarity(text, video), text_to_video)
  return {d: {k: float(v) for k, v in result[d].items()} for d in metrics.DIRECTIONS}


def _assert_record_matches(workdir, want):
  with open(os.path.join(workdir, "metrics.json")) as f:
    got = json.load(f)
  assert got["step"] == 0 and got["num_videos"] == len(TEST_IDS)
  assert got["num_texts"] == len(want["text_to_video"])
  for d in metrics.DIRECTIONS:
    assert set(got[d]) == set(want[d])
    for k, v in want[d].items():
      assert got[d][k] == pytest.approx(v, abs=1e-6), (d, k)
  return got


def test_zero_shot_hf_clip_uses_its_own_tokenizer(msvd_root, tokenizer_dir, tmp_path):
  """Plain CLIP (num_prompts=0) zero-shot equals transformers' CLIPModel end to end."""
  clip_dir = str(tmp_path / "clip")
  torch.manual_seed(0)
  hf = transformers.CLIPModel(_hf_config()).eval()
  randomize_torch_module(hf, seed=5)
  hf.save_pretrained(clip_dir, safe_serialization=True)
  # Without tokenizer files the directory cannot say how its ids were made.
  proc = _run_eval(tmp_path / "no_tok", msvd_root / "data",
                   f"--config.model.init_from={clip_dir}", "--config.model.num_prompts=0")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "config.data.tokenizer" in proc.stderr and "vocab.json" in proc.stderr
  tokenizer_lib.write_clip_tokenizer_files(
      str(SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"), clip_dir)

  workdir = tmp_path / "run"
  proc = _run_eval(workdir, msvd_root / "data", f"--config.model.init_from={clip_dir}",
                   "--config.model.num_prompts=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"{clip_dir} (zero-shot)" in proc.stdout

  frames, captions, text_to_video = _pipeline_frames(msvd_root / "data", 12)
  with torch.no_grad():
    ids, mask = _torch_tokens(clip_dir, captions)
    pooled = hf.text_model(input_ids=ids, attention_mask=mask).pooler_output
    text = hf.text_projection(pooled).numpy()
    video = []
    for f in frames:
      pooled = hf.vision_model(pixel_values=_torch_pixels(f)).pooler_output
      img = hf.visual_projection(pooled).numpy()
      img /= np.linalg.norm(img, axis=-1, keepdims=True)
      video.append(img.mean(0))
  want = _metrics_record(metrics.l2_normalize(text), metrics.l2_normalize(np.stack(video)),
                         text_to_video)
  want["text_to_video"] = text_to_video
  got = _assert_record_matches(workdir, want)
  assert got["num_texts"] > 100  # every caption of the 5 videos
  with open(workdir / "ps_jax_model.json") as f:
    assert json.load(f)["tokenizer"] == os.path.abspath(clip_dir)


def test_zero_shot_official_pth_needs_a_named_tokenizer(msvd_root, tokenizer_dir, tmp_path):
  """An official checkpoint evaluates like the torch transcription of the official model,
  with the tokenizer the user names; without one, an error names the flag."""
  hf_config = _hf_config()
  torch.manual_seed(1)
  ref = TorchPromptSwitch(hf_config, NUM_PROMPTS, num_frames=6).eval()
  randomize_torch_module(ref, seed=6)
  pth = str(tmp_path / "official.pth")
  torch.save({"state_dict": ref.state_dict(), "epoch": 4}, pth)
  text_cfg, vision_cfg = hf_config.text_config, hf_config.vision_config
  arch = [f"--config.model.init_from={pth}",
          f"--config.model.clip.projection_dim={hf_config.projection_dim}"]
  for tower, cfg in (("text", text_cfg), ("vision", vision_cfg)):
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
      arch.append(f"--config.model.clip.{tower}.{field}={getattr(cfg, field)}")
  arch += [f"--config.model.clip.vision.image_size={vision_cfg.image_size}",
           f"--config.model.clip.vision.patch_size={vision_cfg.patch_size}"]

  missing = tmp_path / "missing"
  proc = _run_eval(missing, msvd_root / "data", *arch)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "--config.data.tokenizer=DIR" in proc.stderr and ".pth carries no tokenizer" in (
      proc.stderr)
  assert not (missing / "metrics.json").exists()

  workdir = tmp_path / "run"
  proc = _run_eval(workdir, msvd_root / "data", *arch,
                   f"--config.data.tokenizer={tokenizer_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  frames, captions, text_to_video = _pipeline_frames(msvd_root / "data", NUM_PROMPTS)
  with torch.no_grad():
    ids, mask = _torch_tokens(tokenizer_dir, captions)
    text = ref.encode_text(ids, mask).numpy()
    _, video = ref.encode_video(torch.stack([_torch_pixels(f) for f in frames]))
  want = _metrics_record(text, video.numpy(), text_to_video)
  want["text_to_video"] = text_to_video
  _assert_record_matches(workdir, want)


def test_tokenizer_rule_prefers_the_init_checkpoints_own(tmp_path):
  """A HF CLIP directory's text embedding only means anything with its own tokenizer,
  also on moving_shapes; a named tokenizer wins over both."""
  from ps_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  clip_dir = tmp_path / "clip"
  clip_dir.mkdir()
  shapes = {"data": {"name": "moving_shapes/demo", "tokenizer": ""},
            "model": {"init_from": str(clip_dir)}}
  assert tokenizers.spec_from_config(shapes) == str(clip_dir)
  shapes["model"]["init_from"] = ""
  assert tokenizers.spec_from_config(shapes) == "moving_shapes"
  shapes["data"]["tokenizer"] = "moving_shapes"
  shapes["model"]["init_from"] = str(clip_dir)
  assert tokenizers.spec_from_config(shapes) == "moving_shapes"
  pth = {"data": {"name": "msrvtt/9k", "tokenizer": ""},
         "model": {"init_from": str(tmp_path / "official.pth")}}
  assert tokenizers.spec_from_config(pth) is None
  pth["data"]["tokenizer"] = str(clip_dir)
  assert tokenizers.spec_from_config(pth) == str(clip_dir)
