"""Training losses: symmetric InfoNCE over the global batch and the weighted caption loss.

Layer: foundation (jax and numpy only).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Words whose caption-loss weight is lowered (with the start/end tokens), as in the
# official implementation.
FREQUENT_WORDS = ("in", "on", "of", "to", "about", "this", "that", "a", "an", "the", "and",
                  "there", "here", "is", "are", ".", ",")
FREQUENT_WEIGHT = 0.25
CAPTION_LOSS_MULTIPLIER = 0.5


def contrastive_loss(text: Array, video: Array, logit_scale: Array) -> Array:
  """Symmetric InfoNCE on cosine similarities scaled by exp(logit_scale).

  Under `jax.jit` with batch-sharded inputs the similarity matrix is the global one
  (XLA gathers what it needs), so every text is contrasted with every video of the
  global batch, whatever the mesh.

  Args:
    text: float32[B, E] L2-normalised text embeddings.
    video: float32[B, E] L2-normalised video embeddings; row i matches text i.
    logit_scale: float32[] (log of the temperature's inverse).

  Returns:
    float32[] mean of the text->video and video->text cross-entropies.
  """
  logits = jnp.exp(logit_scale) * (text @ video.T)
  diag_t2v = jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  diag_v2t = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  return -(jnp.mean(diag_t2v) + jnp.mean(diag_v2t)) / 2


def caption_class_weights(tokenizer, vocab_size: int,
                          words: Sequence[str] = FREQUENT_WORDS,
                          weight: float = FREQUENT_WEIGHT) -> np.ndarray:
  """float32[V]: `weight` for frequent words and the start/end tokens, 1 elsewhere.

  Uses the real tokenizer's ids; a frequent word that is not a single token (or is
  unknown to a small vocabulary) is skipped.
  """
  w = np.ones(vocab_size, np.float32)
  ids = {tokenizer.bos_id, tokenizer.eos_id}
  for word in words:
    tokens = tokenizer.encode(word)
    if len(tokens) == 1 and tokens[0] != getattr(tokenizer, "unk_id", -1):
      ids.add(tokens[0])
  w[sorted(ids)] = weight
  return w


def caption_terms(logits: Array, input_ids: Array, eos_id: int,
                  class_weights: Array) -> tuple[Array, Array]:
  """(sum of weighted NLL, sum of weights) over the counted positions of a batch.

  Position t predicts input_ids[:, t+1] from input_ids[:, :t+1]; it counts when its
  input token input_ids[:, t] is not EOS (padding is EOS), so the prediction of the
  first EOS counts and nothing after it does. Each counted position weighs
  class_weights[target].

  Args:
    logits: float[B, L-1, V]; input_ids: int32[B, L]; class_weights: float32[V].
  """
  targets = input_ids[:, 1:]
  counted = (input_ids[:, :-1] != eos_id).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  w = class_weights[targets] * counted
  return jnp.sum(w * nll), jnp.sum(w)


def caption_loss(logits: Array, input_ids: Array, eos_id: int, class_weights: Array,
                 multiplier: float = CAPTION_LOSS_MULTIPLIER) -> Array:
  """Weighted caption cross-entropy (torch `CrossEntropyLoss(weight=...)` semantics):
  sum(w[y] * nll) / sum(w[y]) over counted positions (see `caption_terms`), times
  `multiplier`.

  Args:
    logits: float32[B, L-1, V]; input_ids: int32[B, L]; class_weights: float32[V].

  Returns:
    float32[].
  """
  num, den = caption_terms(logits, input_ids, eos_id, class_weights)
  return multiplier * num / jnp.maximum(den, 1e-9)
