"""ps_jax: Prompt Switch text-to-video retrieval in JAX/Flax.

Layer: model loading (the package re-exports `ps_jax.api`: build_model, load_model,
export_official; every other module is imported by its own name).
"""

__version__ = "0.1.0"

from ps_jax.api import build_model, export_official, load_model  # noqa: E402,F401
