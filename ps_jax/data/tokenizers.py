"""Which tokenizer goes with an experiment or a model, as a spec string that an index stores.

Layer: data (imports `tokenizer` and `moving_shapes`). A spec is an absolute path (a
directory with CLIP tokenizer files, or a word-vocabulary `.json`) or "moving_shapes"
(the synthetic benchmark's word vocabulary, which needs no file). One rule, used by
training, evaluation, indexing and search:

  config.data.tokenizer, else the directory of config.model.init_from (a HF CLIP
  directory holds its tokenizer files, and its text embedding only means anything with
  them), else "moving_shapes" for that benchmark. An official `.pth` holds no tokenizer:
  with one, config.data.tokenizer must name it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from ps_jax import tokenizer as tokenizer_lib
from ps_jax.data import moving_shapes

MOVING_SHAPES = "moving_shapes"


def spec_from_config(config: Mapping[str, Any]) -> Optional[str]:
  """The tokenizer spec of an experiment config (a ConfigDict or its `to_dict()`); None
  when it cannot be inferred."""
  data, model = config.get("data", {}), config.get("model", {})
  named = data.get("tokenizer")
  if named:
    if named.startswith(MOVING_SHAPES) and not os.path.exists(named):
      return named
    return os.path.abspath(named)
  init = model.get("init_from", "")
  if init and os.path.isdir(init):
    return os.path.abspath(init)
  if str(data.get("name", "")).startswith(MOVING_SHAPES):
    return MOVING_SHAPES
  return None


def spec_for_model_dir(path: str) -> Optional[str]:
  """A HF CLIP directory that holds tokenizer files is its own tokenizer spec."""
  if os.path.isdir(path) and all(os.path.exists(os.path.join(path, n))
                                 for n in ("vocab.json", "merges.txt")):
    return os.path.abspath(path)
  return None


def load(spec: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a spec ("moving_shapes" or "moving_shapes/<size>", a CLIP tokenizer
  directory, a word-vocabulary .json).

  Raises:
    FileNotFoundError: the path does not exist. ValueError: not a tokenizer.
  """
  if spec.startswith(MOVING_SHAPES):
    return moving_shapes.make_tokenizer()
  if not os.path.exists(spec):
    raise FileNotFoundError(f"tokenizer {spec!r} does not exist (a directory with CLIP "
                            "tokenizer files, a word-vocabulary .json, or 'moving_shapes')")
  return tokenizer_lib.load_tokenizer(spec)
