"""What the experiment scripts share: result files, in-memory training runs, sweeps, GQ rates.

Every script writes `<name>.json` (its numbers, settings and the command that
made them) and `<name>.png` into `--output_dir`, each through a temporary
file and a rename.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from matplotlib import figure as mpl_figure
import ml_collections
import numpy as np

from gmvq_jax import config_checks
from gmvq_jax import data
from gmvq_jax import evaluation
from gmvq_jax import io as io_lib
from gmvq_jax import metrics as metrics_lib
from gmvq_jax import train_lib
from gmvq_jax.data import pipeline
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook

# Levels of the reported spread of per-token KL bits, in percent.
SPREAD_LEVELS = (1, 5, 50, 95, 99)
# The test figures the GM-VQ sweeps report, with their axis labels.
GMVQ_METRICS = dict(mse="test MSE", perplexity="perplexity exp(H(qbar))",
                    hard_perplexity="hard-code perplexity", code_usage="fraction of codes used",
                    posterior_entropy="mean H(q(c|x)) (nats)")


def command_line() -> str:
  """How this process was started, as a shell command (`python -m experiments.x --flag=...`)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
  return " ".join([program] + [shlex.quote(arg) for arg in sys.argv[1:]])


def write_json(output_dir: str, name: str, payload: dict) -> str:
  """Writes `output_dir/name.json` (created if absent) atomically; returns its path."""
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"{name}.json")
  evaluation.write_json(path, payload)
  return path


def new_figure(num_axes: int = 1, *, figsize: tuple[float, float] = (9.0, 4.2)):
  """(figure, axes): a matplotlib Figure off pyplot, so no backend or display is touched.

  `axes` is one Axes when `num_axes == 1`, else an array of them in a row.
  """
  figure = mpl_figure.Figure(figsize=figsize)
  return figure, figure.subplots(1, num_axes)


def save_figure(figure: Any, output_dir: str, name: str) -> str:
  """Saves a matplotlib figure as `output_dir/name.png` atomically; returns the path."""
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"{name}.png")
  with io_lib.atomic_write(path, ".png") as tmp:
    figure.savefig(tmp, dpi=120, bbox_inches="tight")
  return path


def spread(values: np.ndarray) -> dict[str, float]:
  """min, p1, p5, median (p50), p95, p99, max and mean of a set of numbers."""
  values = np.asarray(values, np.float64).ravel()
  figures = dict(min=float(values.min()))
  for level in SPREAD_LEVELS:
    figures[f"p{level}"] = float(np.percentile(values, level))
  figures.update(max=float(values.max()), mean=float(values.mean()))
  return figures


class Stopwatch:
  """Wall-clock seconds since construction."""

  def __init__(self):
    self._start = time.perf_counter()

  def seconds(self) -> float:
    return time.perf_counter() - self._start


# ------------------------------------------------------------ runs, in memory


def budget_config(config_module: Any, *, num_steps: int, batch_size: int,
                  smoke: bool) -> ml_collections.ConfigDict:
  """`config_module.get_config()` on an experiment's budget, or its `:smoke` variant.

  The warm-up is capped at a tenth of the steps, so short budgets still
  spend most of their steps at the peak learning rate.
  """
  config = config_module.get_config("smoke" if smoke else None)
  if not smoke:
    config.num_steps = num_steps
    config.batch_size = batch_size
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, num_steps // 10)
  return config


def make_step_fn(config: ml_collections.ConfigDict):
  """`train_lib.train_step` jitted for one device. Reusable across configs that differ
  only in `seed` (the step reads the key it is given, not config.seed)."""
  return jax.jit(functools.partial(train_lib.train_step, config=config))


def train_in_memory(config: ml_collections.ConfigDict, *, log_every: int = 0,
                    dataset: Any = None,
                    step_fn: Any = None) -> tuple[train_lib.TrainState, list[dict], Any]:
  """Trains a config on one device with `train_lib.train_step`; no checkpoints, no workdir.

  The same compiled step as `train_lib.train_and_evaluate`, without its
  checkpoints and files. A GQ config with `quantizer.factor = 1.0` keeps
  the TDC multipliers at 1 (x * 1.0 == x exactly), so every token weight
  is 1 and the loss is a plain Gaussian VAE's, recon + kl_weight * (sum of
  KL bits per image).

  Args:
    config: a training config (any method).
    log_every: record the step's metrics every this many steps (0: never).
    dataset: from `data.make_dataset`; made from the config when None.
    step_fn: a `make_step_fn` of an equal config (but for the seed), to skip a compile.

  Returns:
    (final state, [{'step': s, metric: value, ...}, ...], dataset).
  """
  config_checks.validate(config, num_devices=1)
  if dataset is None:
    dataset = data.from_config(config)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train_lib.create_train_state(config, init_rng, dataset)
  step_fn = step_fn or make_step_fn(config)
  history = []
  clock = Stopwatch()
  for step in range(config.num_steps):
    images = dataset.train_batch(step, config.batch_size)
    state, step_metrics = step_fn(state, images, train_rng)
    done = step + 1
    if log_every and (done % log_every == 0 or done == config.num_steps):
      history.append(dict(step=done, seconds=clock.seconds(),
                          **flat_floats(jax.device_get(step_metrics))))
  return state, history, dataset


def flat_floats(tree: dict, prefix: str = "") -> dict[str, float]:
  """{'a': {'b': x}} -> {'a/b': float(x)}: scalar metrics, nested or not."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(flat_floats(value, f"{prefix}{name}/"))
    else:
      flat[f"{prefix}{name}"] = float(np.asarray(value))
  return flat


def _posterior_entropy_step(state, images, mask, *, config):
  model = train_lib.build_model(config)
  _, _, aux = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=False)
  if "probs" not in aux:  # A quantizer without a soft posterior: nothing to measure.
    return jnp.float32(0.0), jnp.float32(0.0)
  probs = aux["probs"]  # (B * h * w, C) q(c|x) of every latent vector.
  vector_mask = jnp.repeat(mask, probs.shape[0] // images.shape[0])
  return jnp.sum(metrics_lib.entropy(probs) * vector_mask), jnp.sum(vector_mask)


def sweep(variants: dict[str, ml_collections.ConfigDict], seeds: Sequence[int], *,
          log_every: int = 0, log: Any = print) -> list[dict]:
  """Trains every variant with every seed in memory and scores the test split.

  One compile per variant (the seeds reuse it). Runs of a quantizer with a
  soft posterior q(c|x) (GM-VQ's) also get its mean entropy over the test vectors.

  Args:
    variants: label -> config.
    seeds: the seeds each variant runs with.
    log_every: also keep the training metrics every this many steps.
    log: called with one line per finished run.

  Returns:
    One record per run: label, seed, the evaluation figures (train_lib.evaluate),
    `posterior_entropy` (nats, when there is a q(c|x)), `history`, `wall_seconds`.
  """
  records = []
  for label, config in variants.items():
    step_fn, eval_fn = make_step_fn(config), train_lib.make_eval_fn(config)
    entropy_fn = jax.jit(functools.partial(_posterior_entropy_step, config=config))
    dataset = data.from_config(config)
    for seed in seeds:
      clock = Stopwatch()
      run_config = config.copy_and_resolve_references()
      run_config.seed = int(seed)
      state, history, _ = train_in_memory(run_config, log_every=log_every, dataset=dataset,
                                          step_fn=step_fn)
      figures, _ = train_lib.evaluate(run_config, state, dataset, step_fn=eval_fn)
      record = dict(label=label, seed=int(seed), **figures)
      entropy = posterior_entropy(run_config, state, dataset, step_fn=entropy_fn)
      if entropy is not None:
        record["posterior_entropy"] = entropy
      record.update(history=history, wall_seconds=clock.seconds())
      records.append(record)
      log(f"{label} seed {seed}: " + ", ".join(
          f"{k} {record[k]:.4g}" for k in ("mse", "perplexity", "hard_perplexity", "code_usage",
                                          "posterior_entropy") if k in record)
          + f" ({record['wall_seconds']:.0f}s)")
  return records


def posterior_entropy(config: ml_collections.ConfigDict, state: train_lib.TrainState,
                      dataset: Any, *, step_fn: Any = None) -> float | None:
  """Mean entropy (nats) of q(c|x) over every latent vector of the test split.

  None for a quantizer without a soft posterior (seen on the first batch).
  """
  step_fn = step_fn or jax.jit(functools.partial(_posterior_entropy_step, config=config))
  batch_size = config.eval_batch_size
  total = count = 0.0
  for images, mask, _ in pipeline.padded_batches(dataset.eval_batches(batch_size), batch_size):
    batch_total, batch_count = jax.device_get(step_fn(state, images, mask))
    if not count and not float(batch_count):
      return None
    total += float(batch_total)
    count += float(batch_count)
  return total / max(count, 1.0)


def _gaussian_test_step(state, images, *, config):
  model = train_lib.build_model(config)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  mu, logvar = model.quantizer.posterior(model.apply(variables, images, False,
                                                     method=model.encode))
  reconstructions = model.apply(variables, mu, False, method=model.decode)
  squared = jnp.sum(jnp.square(reconstructions - images), axis=(1, 2, 3))
  return (gq.kl_bits(mu, logvar, config.quantizer.group_size), gq.kl_bits(mu, logvar, 1),
          squared)


def gaussian_test_rates(config: ml_collections.ConfigDict, state: train_lib.TrainState,
                        dataset: Any) -> tuple[np.ndarray, np.ndarray, float]:
  """KL bits of every test image's posterior, per token and per channel, and the means' PSNR.

  Returns:
    (token_bits (N, h, w, c/m), channel_bits (N, h, w, c), psnr in dB of the
    images decoded from the posterior means).
  """
  step_fn = jax.jit(functools.partial(_gaussian_test_step, config=config))
  tokens, channels, squared, values = [], [], 0.0, 0
  batch_size = config.eval_batch_size
  for images, _, real in pipeline.padded_batches(dataset.eval_batches(batch_size), batch_size):
    token_bits, channel_bits, batch_squared = jax.device_get(step_fn(state, images))
    tokens.append(np.asarray(token_bits[:real]))
    channels.append(np.asarray(channel_bits[:real]))
    squared += float(np.sum(batch_squared[:real], dtype=np.float64))
    values += real * int(np.prod(images.shape[1:]))
  return (np.concatenate(tokens), np.concatenate(channels),
          float(metrics_lib.psnr(squared / values)))


def tokens_psnr(config: ml_collections.ConfigDict, state: train_lib.TrainState, dataset: Any,
                *, log2_codebook_size: int | None = None,
                prior_weight: float | None = None) -> dict:
  """GQ's offline conversion of the test split, in memory: PSNR from tokens and codebook use.

  Args:
    config, state, dataset: a trained GQ model.
    log2_codebook_size: K = 2^this codewords; default the config's.
    prior_weight: the quantization rule's; default the config's.

  Returns:
    psnr_vq, psnr_gaussian (dB), code_usage and token_perplexity.
  """
  from gmvq_jax import conversion  # pylint: disable=g-import-not-at-top

  q = config.quantizer
  log2_k = q.log2_codebook_size if log2_codebook_size is None else log2_codebook_size
  prior_weight = q.prior_weight if prior_weight is None else prior_weight
  codebook = jnp.asarray(gq_codebook.sample_codebook(q.codebook_seed, 2**log2_k, q.group_size,
                                                     q.codebook_sampler))
  step_fn = jax.jit(functools.partial(conversion.convert_batch, config=config))
  batch_size = config.eval_batch_size
  sq_gaussian = sq_vq = 0.0
  values, tokens = 0, []
  for images, _, real in pipeline.padded_batches(dataset.eval_batches(batch_size), batch_size):
    out = jax.device_get(step_fn(state, images, codebook, jnp.float32(prior_weight)))
    sq_gaussian += float(np.sum(out["squared_gaussian"][:real], dtype=np.float64))
    sq_vq += float(np.sum(out["squared_vq"][:real], dtype=np.float64))
    values += real * int(np.prod(images.shape[1:]))
    tokens.append(np.asarray(out["tokens"][:real]).ravel())
  counts = np.bincount(np.concatenate(tokens), minlength=2**log2_k)
  return dict(psnr_vq=float(metrics_lib.psnr(sq_vq / values)),
              psnr_gaussian=float(metrics_lib.psnr(sq_gaussian / values)),
              code_usage=float(metrics_lib.code_usage(counts)),
              token_perplexity=float(metrics_lib.hard_perplexity(counts)))


def as_jsonable(value: Any) -> Any:
  """Config values and numpy scalars as plain JSON types."""
  if isinstance(value, ml_collections.ConfigDict):
    return json.loads(value.to_json_best_effort())
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, (tuple, list)):
    return [as_jsonable(v) for v in value]
  return value


def histogram_edges(samples: Sequence[np.ndarray], bin_width: float) -> np.ndarray:
  """Common bin edges of width `bin_width` covering every sample set."""
  low = min(float(np.min(s)) for s in samples)
  high = max(float(np.max(s)) for s in samples)
  start = np.floor(low / bin_width) * bin_width
  return np.arange(start, high + bin_width, bin_width)


def summarize_sweep(records: list[dict], metrics: Sequence[str]) -> dict[str, dict]:
  """label -> {metric: {'mean', 'std', 'values'}} over the seeds of each label."""
  summary: dict[str, dict] = {}
  for record in records:
    per_label = summary.setdefault(record["label"], {})
    for metric in metrics:
      per_label.setdefault(metric, dict(values=[]))["values"].append(float(record[metric]))
  for per_label in summary.values():
    for figures in per_label.values():
      figures.update(mean=float(np.mean(figures["values"])),
                     std=float(np.std(figures["values"])))
  return summary


def plot_sweep(records: list[dict], metrics: dict[str, str], *, xlabel: str, title: str):
  """One panel per metric: every run as a dot over its label, the mean as a black tick.

  Args:
    records: from `sweep`.
    metrics: record key -> axis label, e.g. {'mse': 'test MSE'}.
    xlabel, title: of the figure.
  """
  labels = list(dict.fromkeys(r["label"] for r in records))
  columns = min(3, len(metrics))
  rows = -(-len(metrics) // columns)
  figure = mpl_figure.Figure(figsize=(4.0 * columns, 3.3 * rows))
  axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
  for axis in axes[len(metrics):]:
    axis.set_visible(False)
  for axis, (metric, name) in zip(axes, metrics.items()):
    for x, label in enumerate(labels):
      values = [r[metric] for r in records if r["label"] == label]
      axis.plot([x - 0.25, x + 0.25], [np.mean(values)] * 2, color="black", lw=2)
      axis.scatter(np.full(len(values), x), values, color="tab:blue", s=18, zorder=3)
    axis.set_xticks(range(len(labels)), labels)
    axis.set_xlabel(xlabel)
    axis.set_title(name, fontsize=10)
  figure.suptitle(title, fontsize=11)
  figure.tight_layout()
  return figure


# ------------------------------------------------- resumable, shared sweeps


def train_and_score(config: ml_collections.ConfigDict) -> dict:
  """Trains in memory; the validation and test figures of the final state and the history."""
  clock = Stopwatch()
  state, history, dataset = train_in_memory(config, log_every=max(1, config.num_steps // 10))
  eval_fn = train_lib.make_eval_fn(config)
  val, _ = train_lib.evaluate(config, state, dataset, split="val", step_fn=eval_fn)
  test, _ = train_lib.evaluate(config, state, dataset, split="test", step_fn=eval_fn)
  return dict(val=val, test=test, history=history, wall_seconds=clock.seconds())


def run_claimed(output_dir: str, runs: Sequence[tuple[str, int, Any]]) -> list[dict]:
  """Trains each (label, seed, make_config) not yet on disk; returns every run's record.

  Records live in `output_dir/runs/<label>_seed<seed>.json`, so a rerun
  resumes. A run is claimed by creating its `.claim` file first, so several
  processes started with the same arguments share the work; one with nothing
  left to claim waits for the others' records. (Delete a stale `.claim`
  left by a killed process to retrain that run.)

  Args:
    runs: `make_config()` gives the run's training config.

  Returns:
    `{label, seed, val, test, history, wall_seconds}` per run, in order.
  """
  os.makedirs(os.path.join(output_dir, "runs"), exist_ok=True)
  paths = [os.path.join(output_dir, "runs", f"{label}_seed{seed}.json") for label, seed, _ in runs]
  for path, (label, seed, make_config) in zip(paths, runs):
    if os.path.exists(path):
      continue
    try:
      os.close(os.open(f"{path}.claim", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
      continue  # Done, or another process is on it.
    record = dict(label=label, seed=seed, **train_and_score(make_config()))
    write_json(os.path.dirname(path), os.path.basename(path)[:-len(".json")], record)
    print(f"{label} seed {seed}: val mse {record['val']['mse']:.4g}, hard perplexity"
          f" {record['val']['hard_perplexity']:.4g}, usage {record['val']['code_usage']:.3f}"
          f" ({record['wall_seconds']:.0f}s)", flush=True)
  records = []
  for path in paths:
    while not os.path.exists(path):  # Another process is training it.
      time.sleep(10)
    with open(path, encoding="utf-8") as f:
      records.append(json.load(f))
  return records


def summarize_splits(records: list[dict], split: str) -> dict[str, dict[str, dict[str, float]]]:
  """label -> metric -> {mean, std} over seeds, of one split's figures."""
  summary = {}
  for label in dict.fromkeys(r["label"] for r in records):
    runs = [r[split] for r in records if r["label"] == label]
    summary[label] = {metric: dict(mean=float(np.mean([r[metric] for r in runs])),
                                   std=float(np.std([r[metric] for r in runs])))
                      for metric in runs[0]}
  return summary
