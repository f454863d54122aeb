"""Shared pytest fixtures: tiny CLIP configs and HF checkpoints written to temp dirs."""

import importlib.util
import os
import pathlib

# The TPU compiler (libtpu, from the test extra) is used only through compile-only
# topologies (tests/test_aot.py); every computation, also in the tests' subprocesses,
# runs on the CPU without probing for a TPU first.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np
import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def highest_matmul_precision():
  """float32 matmuls at full precision during one test (parity with torch); the rest of
  the session keeps JAX's default."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def run_seeds():
  """benchmarks/run_seeds.py as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      "run_seeds", REPO / "benchmarks" / "run_seeds.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_hf_clip_config(variant: str = "a") -> dict:
  """Two tiny, deliberately different CLIP configs (patch, width, layers, heads, MLP)."""
  if variant == "a":
    text = dict(vocab_size=99, max_position_embeddings=16, hidden_size=32,
                intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=64,
                  num_hidden_layers=3, num_attention_heads=4)
    proj = 24
  else:
    text = dict(vocab_size=130, max_position_embeddings=12, hidden_size=48,
                intermediate_size=96, num_hidden_layers=3, num_attention_heads=2)
    vision = dict(image_size=24, patch_size=4, hidden_size=32, intermediate_size=80,
                  num_hidden_layers=2, num_attention_heads=2)
    proj = 16
  text.update(eos_token_id=text["vocab_size"] - 1, bos_token_id=text["vocab_size"] - 2,
              pad_token_id=text["vocab_size"] - 1)
  return {"text_config": text, "vision_config": vision, "projection_dim": proj}


def tiny_hf_clip_real_vocab_config(max_len: int):
  """The tiny test CLIP ("a") with CLIP's real vocabulary (49,408 ids, EOT the largest)
  and `max_len` text positions: it reads what CLIP's own BPE tokenizer writes."""
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = tiny_hf_clip_config("a")
  cfg["text_config"].update(vocab_size=49408, eos_token_id=49407, bos_token_id=49406,
                            pad_token_id=49407, max_position_embeddings=max_len)
  cfg["projection_dim"] = cfg["text_config"]["hidden_size"]  # the caption head needs it
  return transformers.CLIPConfig(**cfg)


REAL_VOCAB_MAX_LEN = 32  # paragraphs run longer: every one is truncated, EOS kept


@pytest.fixture(scope="session")
def real_vocab_clip_dir(tmp_path_factory):
  """A tiny random HF CLIP with CLIP's vocabulary (REAL_VOCAB_MAX_LEN text positions)
  and CLIP's own tokenizer files: the model of the real-annotation end-to-end tests."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from ps_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  out = str(tmp_path_factory.mktemp("real_vocab_clip"))
  torch.manual_seed(0)
  transformers.CLIPModel(tiny_hf_clip_real_vocab_config(REAL_VOCAB_MAX_LEN)).save_pretrained(
      out, safe_serialization=True)
  tokenizer_lib.write_clip_tokenizer_files(
      str(SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"), out)
  return out


def randomize_torch_module(module, seed: int, std: float = 0.05) -> None:
  """Gives every parameter random values (biases and LayerNorm scales included).

  HF initialises biases to 0 and LayerNorm scales to 1, which would hide layout bugs.
  """
  import torch  # pylint: disable=g-import-not-at-top

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(module.named_parameters()):
      noise = torch.randn(p.shape, generator=gen) * std
      if name.endswith("logit_scale"):
        p.fill_(2.6592)
      elif p.ndim == 1 and ("norm" in name and name.endswith("weight")):
        p.copy_(1.0 + noise)
      else:
        p.copy_(noise)


def write_tiny_hf_clip(out_dir: str, variant: str = "a", seed: int = 0) -> str:
  """Builds a random `transformers.CLIPModel` and saves it with save_pretrained."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  config = transformers.CLIPConfig(**tiny_hf_clip_config(variant))
  model = transformers.CLIPModel(config).eval()
  randomize_torch_module(model, seed)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


def random_text_batch(rng: np.random.Generator, batch: int, length: int, vocab: int):
  """BOS + random content + EOS + EOS padding; EOS = vocab - 1 (the largest id)."""
  ids = np.full((batch, length), vocab - 1, np.int32)
  mask = np.zeros((batch, length), np.int32)
  for b in range(batch):
    n = int(rng.integers(1, length - 1))
    ids[b, 0] = vocab - 2
    ids[b, 1:1 + n] = rng.integers(0, vocab - 2, n)
    mask[b, :n + 2] = 1
  return ids, mask


@pytest.fixture(scope="session")
def hf_clip_dirs(tmp_path_factory):
  """{"a": dir, "b": dir}: two tiny random HF CLIP checkpoints."""
  root = tmp_path_factory.mktemp("hf_clip")
  return {v: write_tiny_hf_clip(str(root / v), v, seed=i) for i, v in enumerate("ab")}


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory):
  """CLIP tokenizer files derived offline from ../shared/data's BPE merges."""
  from ps_jax import tokenizer  # pylint: disable=g-import-not-at-top

  out = str(tmp_path_factory.mktemp("clip_tok"))
  tokenizer.write_clip_tokenizer_files(str(SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"), out)
  return out
