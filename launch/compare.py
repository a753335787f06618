"""The comparison table: `python -m launch.compare --config=configs/compare_demo.py --workdir=DIR`.

Trains every method the config lists (same network, data, steps and seed),
one after another under DIR/runs/<method>/, evaluates each on the test split
(GQ after its offline conversion to tokens) and writes DIR/table.md,
DIR/table.csv, DIR/curves.png and DIR/scatter.png. Rerunning skips the
methods that finished and resumes the one that was interrupted. Override a
field of every method with --config.train.FIELD=VALUE, of one method's
quantizer with --config.quantizers.METHOD.FIELD=VALUE, and choose methods
with --config.methods='("vqvae","gmvq")'.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from gmvq_jax import comparison
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Compare config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the runs and the table.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.setup_logging()
  with common.user_errors():
    comparison.compare(_CONFIG.value, _WORKDIR.value)
  with open(f"{_WORKDIR.value}/table.md", encoding="utf-8") as f:
    print(f.read())
  print("Wrote table.md, table.csv, curves.png and scatter.png in", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
