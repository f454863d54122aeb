"""Old name of `ps_jax.metrics` (retrieval metrics); kept for one release."""

from ps_jax.metrics import *  # noqa: F401,F403
