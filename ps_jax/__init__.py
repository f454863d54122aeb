"""ps_jax: Prompt Switch text-to-video retrieval in JAX/Flax."""

__version__ = "0.1.0"
