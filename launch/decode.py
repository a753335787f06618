"""Token file back to images: `python -m launch.decode --workdir=DIR --tokens=PATH [--output=OUT.npz]`.

Decodes a token file of any method (from `launch.tokenize`, or GQ's
`launch.quantize`) with the latest checkpoint of DIR. Before anything runs
it checks the token grid and range, the stored codebook, and that the
file's fingerprints are this checkpoint's and codebook's: tokens of another
run, or of a changed codebook, are refused with one line. Then it writes
OUT.npz (uint8 images under 'images'; default PATH without .npz +
'_decoded.npz') and a PNG grid of the first images beside it; existing
files are kept unless --overwrite is given.
"""

from absl import flags

from gmvq_jax import tokenizer
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The run whose model made the tokens.")
_TOKENS = flags.DEFINE_string("tokens", None,
                              "A token file written by launch.tokenize or launch.quantize.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the images (.npz).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per device call; default eval_batch_size.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images in the PNG grid.")
flags.mark_flags_as_required(["workdir", "tokens"])


def main(argv):
  with common.launched(argv):
    output, images = tokenizer.decode_file(
        _WORKDIR.value, _TOKENS.value, output=_OUTPUT.value, overwrite=_OVERWRITE.value,
        batch_size=_BATCH.value, num_images=_NUM_IMAGES.value)
  print(f"Decoded {images.shape[0]} images to {output}")


if __name__ == "__main__":
  common.run(main)
