"""Flax modules: the ResNet encoder/decoder and the autoencoders around the quantizers."""
