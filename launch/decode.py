"""Token file back to images: `python -m launch.decode --workdir=DIR --tokens=PATH [--output=OUT.npz]`.

Checks that the token file fits the run's checkpoint (codebook K and m,
token grid, indices in [0, K)) before anything runs, then decodes and writes
OUT.npz (uint8 images under 'images'; default PATH without .npz +
'_decoded.npz') and a PNG grid of the first images beside it.
"""

from absl import app
from absl import flags

from gmvq_jax import conversion
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The GQ run whose decoder made the tokens.")
_TOKENS = flags.DEFINE_string("tokens", None, "A token file written by launch.quantize.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the images (.npz).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per device call; default eval_batch_size.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images in the PNG grid.")
flags.mark_flags_as_required(["workdir", "tokens"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.setup_logging()
  with common.user_errors():
    output, images = conversion.decode(_WORKDIR.value, _TOKENS.value, output=_OUTPUT.value,
                                       batch_size=_BATCH.value, num_images=_NUM_IMAGES.value)
  print(f"Decoded {images.shape[0]} images to {output}")


if __name__ == "__main__":
  common.run(main)
