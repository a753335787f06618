"""gmvq_jax: probabilistic vector quantization of images (GM-VQ, GQ, baselines) in JAX/Flax."""
