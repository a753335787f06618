"""Tokens of any method: `python -m launch.tokenize --workdir=DIR [--split=test] [--output=OUT.npz]`.

Restores the latest checkpoint of a run of any method, encodes its val or
test split and writes the tokens to OUT.npz (default DIR/tokens/<split>.npz)
and their metadata to OUT.json beside it. The .npz holds `tokens` (N, h, w, t)
int32, the arrays that give a token its meaning (GQ's `codebook`, the other
methods' quantizer parameters under `quantizer/...`) and `metadata`: method,
token grid, codebook size, step, bpp, and sha256 fingerprints of the
checkpoint and of the codebook, which `launch.decode` checks before decoding.
An existing output is kept unless --overwrite is given.

GQ runs also take the offline conversion's --codebook_seed, --prior_weight
and --sampler (default the run's quantizer fields); `launch.quantize` is
GQ's conversion with its report and pictures.
"""

from absl import flags

from gmvq_jax import tokenizer
from gmvq_jax.data import registry
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a training run (any method).")
_SPLIT = flags.DEFINE_enum("split", "test", list(registry.EVAL_SPLITS), "Split to tokenize.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write; default WORKDIR/tokens/<split>.npz.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per device call; default eval_batch_size.")
_SEED, _PRIOR_WEIGHT, _SAMPLER = common.define_gq_codebook_flags("GQ runs: ")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  with common.launched(argv):
    output, metadata = tokenizer.tokenize_split(
        _WORKDIR.value, split=_SPLIT.value, output=_OUTPUT.value, overwrite=_OVERWRITE.value,
        batch_size=_BATCH.value, codebook_seed=_SEED.value, prior_weight=_PRIOR_WEIGHT.value,
        sampler=_SAMPLER.value)
  shape = "x".join(map(str, metadata["tokens_shape"]))
  print(f"Wrote {shape} {metadata['method']} tokens ({metadata['bpp']:.4g} bpp) to {output}")


if __name__ == "__main__":
  common.run(main)
