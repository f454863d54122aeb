"""Old name of `ps_jax.retrieval.store` (the on-disk index); kept for one release."""

from ps_jax.retrieval.store import *  # noqa: F401,F403
