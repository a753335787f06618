"""Pure-function quantizers: GM-VQ, GQ, k-means, and the baselines' VQ, SQ-VAE, Gumbel, FSQ, LFQ, BSQ."""
