"""Model fingerprints: which model produced an index's embeddings.

Layer: foundation (numpy; jax's tree utilities, imported where used).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def _json_default(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  raise TypeError(f"Config value of type {type(value).__name__} is not JSON serialisable: "
                  f"{value!r}")


def canonical_json(config: Any) -> str:
  """Canonical JSON of a config: sorted keys, no spaces, ASCII (ml_collections via to_dict)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                    allow_nan=True, default=_json_default)


def fingerprint_params(config_dict: Any, params_pytree: Any) -> str:
  """A model fingerprint: sha256 over the canonical config JSON and the parameter bytes.

  Parameters are hashed leaf by leaf in sorted key-path order, each as its path, dtype,
  shape and C-order bytes, so the result does not depend on dict insertion order or on
  the device the arrays live on.

  Args: config_dict, the model config (a dict, or anything with `to_dict()`), JSON-able;
  params_pytree, a pytree of arrays (jax or numpy). Returns "sha256:<64 hex digits>".
  """
  import jax  # pylint: disable=g-import-not-at-top

  h = hashlib.sha256()
  config_json = canonical_json(config_dict).encode("utf-8")
  h.update(b"config\0%d\0" % len(config_json))
  h.update(config_json)
  leaves = jax.tree_util.tree_flatten_with_path(params_pytree)[0]
  keyed = sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)
  for name, leaf in keyed:
    array = np.ascontiguousarray(np.asarray(leaf))
    header = f"param\0{name}\0{array.dtype.str}\0{array.shape}\0".encode("utf-8")
    h.update(header)
    h.update(array.tobytes())
  return "sha256:" + h.hexdigest()
