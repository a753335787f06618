"""gmvq_jax: probabilistic vector quantization of images (GM-VQ, GQ, baselines) in JAX/Flax."""


def __getattr__(name):
  # `gmvq_jax.Tokenizer` without importing JAX on `import gmvq_jax`.
  if name == "Tokenizer":
    from gmvq_jax import tokenizer  # pylint: disable=g-import-not-at-top
    return tokenizer.Tokenizer
  raise AttributeError(f"module 'gmvq_jax' has no attribute {name!r}")
