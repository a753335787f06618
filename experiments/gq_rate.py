"""GQ: PSNR after conversion against log2 K around the trained rate, and against the group size m.

GQ paper (003): the conversion works best when log2 K matches the per-token
KL rate R that TDC trained for (too few codewords cannot cover the
posterior; too many pull the argmax of q(c)/p(c) past the posterior mean),
and at a fixed number of bits per channel larger groups m quantize better
(m = 16 about 2 dB above m = 1 in the paper).

Here: the GQ demo network on the embedded photographs, c = 16 latent
channels, `--bits_per_channel` bits per channel (so a token of m channels is
trained by TDC for log2 K = m * bits_per_channel bits, the same bits per pixel
for every m). One TDC run per m in `--group_sizes` on the same budget; each is
converted at its own K (PSNR against m), and the run with
m = `--sweep_group_size` is also converted with every log2 K in
`--sweep_log2_k` (PSNR against log2 K).

  python -m experiments.gq_rate --output_dir=experiments/results/gq_rate

Writes gq_rate.png and gq_rate.json into --output_dir.
"""

from __future__ import annotations

from absl import app
from absl import flags
import numpy as np

from configs import gq_demo
from experiments import common

NAME = "gq_rate"

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where gq_rate.png and gq_rate.json go.")
_GROUP_SIZES = flags.DEFINE_list("group_sizes", ["1", "4", "16"], "Token sizes m compared.")
_BITS_PER_CHANNEL = flags.DEFINE_integer("bits_per_channel", 1,
                                         "TDC target per channel: log2 K = m * this.")
_SWEEP_GROUP_SIZE = flags.DEFINE_integer("sweep_group_size", 4,
                                         "The m whose run is converted at every log2 K.")
_SWEEP_LOG2_K = flags.DEFINE_list("sweep_log2_k", ["1", "2", "3", "4", "5", "6", "8", "10"],
                                  "Codebook sizes log2 K of the conversion sweep.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 800, "Training steps of every run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Training batch of every run.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds: gq_demo:smoke (c = 8), m in {1, 4}.")


def run_config(group_size: int, *, bits_per_channel: int, num_steps: int, batch_size: int,
               smoke: bool):
  """The GQ demo with tokens of `group_size` channels trained for m * bits_per_channel bits."""
  config = common.budget_config(gq_demo, num_steps=num_steps, batch_size=batch_size, smoke=smoke)
  config.quantizer.group_size = group_size
  config.quantizer.log2_codebook_size = group_size * bits_per_channel
  return config


def plot(by_group: dict, sweep: list[dict], *, sweep_group: int, trained_log2_k: int,
         token_rate: float):
  figure, (left, right) = common.new_figure(2, figsize=(10, 3.9))
  left.plot([s["log2_k"] for s in sweep], [s["psnr_vq"] for s in sweep], marker="o",
            label="decoded from tokens")
  left.axhline(sweep[0]["psnr_gaussian"], color="gray", ls=":", label="from posterior means")
  left.axvline(trained_log2_k, color="black", lw=1, label=f"TDC target {trained_log2_k} bits")
  left.axvline(token_rate, color="tab:red", lw=1, ls="--",
               label=f"mean test KL {token_rate:.2f} bits")
  left.set_xlabel("log2 K of the conversion codebook")
  left.set_ylabel("test PSNR (dB)")
  left.set_title(f"one TDC model (m = {sweep_group}), codebooks of every size", fontsize=10)
  left.legend(fontsize=7)
  groups = sorted(by_group)
  right.plot(groups, [by_group[m]["psnr_vq"] for m in groups], marker="o",
             label="decoded from tokens")
  right.plot(groups, [by_group[m]["psnr_gaussian"] for m in groups], marker=".", ls=":",
             color="gray", label="from posterior means")
  right.set_xscale("log", base=2)
  right.set_xticks(groups, [str(m) for m in groups])
  right.set_xlabel("group size m (channels per token), same bits per pixel")
  right.set_ylabel("test PSNR (dB)")
  right.set_title("one TDC model per m, K = 2^(m x bits per channel)", fontsize=10)
  right.legend(fontsize=7)
  figure.suptitle("GQ conversion: PSNR against codebook size and group size (GQ paper)",
                  fontsize=11)
  figure.tight_layout()
  return figure


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  groups = [int(m) for m in _GROUP_SIZES.value]
  sweep_log2_k = [int(k) for k in _SWEEP_LOG2_K.value]
  sweep_group = _SWEEP_GROUP_SIZE.value
  if _SMOKE.value:
    groups, sweep_group, sweep_log2_k = [1, 4], 4, [2, 4, 6]
  if sweep_group not in groups:
    raise app.UsageError(f"--sweep_group_size={sweep_group} must be one of --group_sizes.")
  by_group, sweep, sweep_rate = {}, [], None
  for group in groups:
    run_clock = common.Stopwatch()
    config = run_config(group, bits_per_channel=_BITS_PER_CHANNEL.value,
                        num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value,
                        smoke=_SMOKE.value)
    state, history, dataset = common.train_in_memory(config, log_every=max(1,
                                                     config.num_steps // 10))
    token_bits, _, _ = common.gaussian_test_rates(config, state, dataset)
    figures = dict(log2_k=int(config.quantizer.log2_codebook_size),
                   token_bits=common.spread(token_bits),
                   **common.tokens_psnr(config, state, dataset))
    if group == sweep_group:
      sweep_rate = float(np.mean(token_bits))
      for log2_k in sweep_log2_k:
        converted = common.tokens_psnr(config, state, dataset, log2_codebook_size=log2_k)
        sweep.append(dict(log2_k=log2_k, **converted))
        print(f"m={group} log2 K={log2_k}: PSNR {converted['psnr_vq']:.2f} dB", flush=True)
    figures.update(final_lam=history[-1]["lam"], wall_seconds=run_clock.seconds())
    by_group[group] = figures
    print(f"m={group} (log2 K={figures['log2_k']}): mean KL {figures['token_bits']['mean']:.2f}"
          f" bits, PSNR {figures['psnr_gaussian']:.2f} -> {figures['psnr_vq']:.2f} dB"
          f" ({figures['wall_seconds']:.0f}s)", flush=True)
  figure = plot(by_group, sweep, sweep_group=sweep_group,
                trained_log2_k=by_group[sweep_group]["log2_k"], token_rate=sweep_rate)
  png = common.save_figure(figure, _OUTPUT_DIR.value, NAME)
  payload = dict(
      experiment="GQ conversion PSNR vs log2 K and vs group size m (GQ paper)",
      command=common.command_line(),
      smoke=_SMOKE.value,
      settings=dict(group_sizes=groups, bits_per_channel=_BITS_PER_CHANNEL.value,
                    sweep_group_size=sweep_group, sweep_log2_k=sweep_log2_k,
                    config=common.as_jsonable(run_config(
                        sweep_group, bits_per_channel=_BITS_PER_CHANNEL.value,
                        num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value,
                        smoke=_SMOKE.value))),
      by_group_size={str(m): v for m, v in by_group.items()},
      log2_k_sweep=dict(group_size=sweep_group, mean_token_bits=sweep_rate, points=sweep),
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(_OUTPUT_DIR.value, NAME, payload)
  print(f"Wrote {png} and {path} in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
