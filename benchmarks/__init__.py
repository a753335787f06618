"""Speed and quality measurements of gmvq_jax; run as scripts, never as tests."""
