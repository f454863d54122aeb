"""ps_jax: Prompt Switch text-to-video retrieval in JAX/Flax."""

__version__ = "0.1.0"

from ps_jax.api import build_model, export_official, load_model  # noqa: E402,F401
