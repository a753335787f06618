"""GQ's offline step: `python -m launch.quantize --workdir=DIR [--prior_weight=W] [--split=test]`.

Restores the latest checkpoint of a GQ run, samples the N(0, I) codebook,
quantizes the posterior means of the split and writes DIR/tokens/<split>.npz
(tokens, codebook, metadata; DIR/tokens/<split>.json repeats the metadata),
DIR/gq_report.json (PSNR before and after, bpp, code usage, token
perplexity, per-token KL bits) and DIR/gq_reconstructions.png (originals,
decoded from the posterior means, decoded from the tokens). The token file
is of the format `launch.tokenize` writes for every method, fingerprints of
the checkpoint and codebook included; `launch.decode` turns it into images.
Tokens of an earlier conversion of the split are kept unless --overwrite is
given.
"""

import json
import os

from absl import flags

from gmvq_jax import conversion
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a GQ training run.")
_SEED, _PRIOR_WEIGHT, _SAMPLER = common.define_gq_codebook_flags()
_SPLIT = flags.DEFINE_enum("split", "test", list(conversion.SPLITS),
                           "Split to tokenize ('train' needs a TFDS dataset).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per device call; default eval_batch_size.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images shown in gq_reconstructions.png.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace the tokens of an earlier conversion of the split.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  with common.launched(argv):
    report = conversion.convert(
        _WORKDIR.value, codebook_seed=_SEED.value, prior_weight=_PRIOR_WEIGHT.value,
        sampler=_SAMPLER.value, split=_SPLIT.value, batch_size=_BATCH.value, num_images=_NUM_IMAGES.value,
        overwrite=_OVERWRITE.value)
  summary = {k: v for k, v in report.items() if k != "kl_bits_histogram"}
  print(json.dumps(summary, indent=2))
  print("Wrote", os.path.join(_WORKDIR.value, conversion.TOKENS_SUBDIR, f"{_SPLIT.value}.npz"),
        os.path.join(_WORKDIR.value, conversion.REPORT_NAME), "and",
        os.path.join(_WORKDIR.value, conversion.PICTURE_NAME))


if __name__ == "__main__":
  common.run(main)
