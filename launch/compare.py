"""The comparison table: `python -m launch.compare --config=configs/compare_demo.py --workdir=DIR`.

Every method the config lists gets the same protocol (same network, data,
steps and tuning budget; `gmvq_jax.comparison`): seed seeds[0] is trained at
each multiplier of lr_grid times train.optimizer.peak_lr, the one with the
lowest final validation MSE is chosen, the other seeds are trained at it,
and the table reports the test figures' mean ± std over the seeds (GQ after
its offline conversion to tokens). Runs live in
DIR/runs/<method>/lr<multiplier>_seed<seed>/; the outputs are DIR/table.md,
table.csv, tuning.md, tuning.csv (val MSE at every multiplier; run times), curves.png
and scatter.png. Rerunning skips the runs that finished and resumes the one
that was interrupted. Override a field of every method with
--config.train.FIELD=VALUE, of one method's quantizer with
--config.quantizers.METHOD.FIELD=VALUE, choose methods with
--config.methods='("vqvae","gmvq")', and set the protocol with
--config.seeds='(0,1,2)', --config.lr_grid='(0.5,1.0,2.0)' and
--config.method_steps="{'gq': 1200}".
"""

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from gmvq_jax import comparison
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Compare config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the runs and the table.")
flags.mark_flags_as_required(["config"])
_PRINT_CONFIG = common.define_print_config_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if common.print_config_or_require_workdir(_PRINT_CONFIG, _CONFIG.value, _WORKDIR):
    return
  common.setup_logging()
  with common.user_errors():
    comparison.compare(_CONFIG.value, _WORKDIR.value)
  print((epath.Path(_WORKDIR.value) / "table.md").read_text(encoding="utf-8"))
  print("Wrote table.md, table.csv, tuning.md, tuning.csv, curves.png and scatter.png in",
        _WORKDIR.value)


if __name__ == "__main__":
  common.run(main, config_flags=("config",))
