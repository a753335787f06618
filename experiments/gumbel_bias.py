"""Gumbel-softmax gradient bias against the entropy of the categorical posterior.

GM-VQ paper (001), Fig. 3 and App. A.1: an MLP with hidden layers [50, 5]
maps one of 10 one-hot actions to a scalar f. The distribution over actions
is p = softmax(l / T) for a fixed set of unnormalised logits l and a range of
temperatures T, which sweeps its entropy. The exact gradient of
E_p[f(onehot(c))] = sum_c p_c f(e_c) with respect to the logits theta = l / T
is compared with the Gumbel-softmax estimate, the gradient of f at a
Gumbel-softmax sample averaged over 50 repeats; the bias is the Euclidean
norm of (average estimate - exact gradient). The paper reports a Pearson
correlation of 0.77 between bias and entropy.

Two estimators: the straight-through one GM-VQ trains with (forward the hard
one-hot, gradient of the soft sample; `gmvq.gumbel_softmax_straight_through`)
and the relaxed one (f of the soft sample). Each point is also measured with
many repeats (`--num_repeats_reference`), which separates the estimator's
bias from the Monte-Carlo noise of a 50-repeat average.

  python -m experiments.gumbel_bias --output_dir=experiments/results/gumbel_bias

Writes gumbel_bias.png and gumbel_bias.json into --output_dir.
"""

from __future__ import annotations

import functools
from typing import Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from scipy import stats

from experiments import common
from gmvq_jax.quantizers import gmvq

NAME = "gumbel_bias"
ESTIMATORS = ("straight_through", "relaxed")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where gumbel_bias.png and gumbel_bias.json go.")
_NUM_ACTIONS = flags.DEFINE_integer("num_actions", 10, "Categories (one-hot actions).")
_HIDDEN = flags.DEFINE_list("hidden", ["50", "5"], "Hidden layer widths of the MLP.")
_ACTIVATION = flags.DEFINE_enum("activation", "relu", ["relu", "tanh"], "MLP non-linearity.")
_NUM_SETS = flags.DEFINE_integer(
    "num_sets", 10, "Independent (MLP, logits) pairs; each is swept over every temperature.")
_NUM_TEMPERATURES = flags.DEFINE_integer("num_temperatures", 20,
                                         "Softmax temperatures T per set (log-spaced).")
_T_RANGE = flags.DEFINE_list("temperature_range", ["0.1", "10"],
                             "Smallest and largest softmax temperature T of the logits.")
_LOGIT_SCALE = flags.DEFINE_float("logit_scale", 2.0, "Std of the fixed unnormalised logits.")
_GUMBEL_TEMPERATURE = flags.DEFINE_float("gumbel_temperature", 1.0,
                                         "tau of the Gumbel-softmax sample.")
_NUM_REPEATS = flags.DEFINE_integer("num_repeats", 50,
                                    "Gumbel samples averaged per estimate (paper: 50).")
_NUM_REPEATS_REFERENCE = flags.DEFINE_integer(
    "num_repeats_reference", 20000, "Samples for the near-exact expected estimate (0: skip).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the MLPs, logits and Gumbel noise.")
_SMOKE = flags.DEFINE_bool("smoke", False, "A seconds-long run: 3 sets x 5 temperatures.")


class RewardMLP(nn.Module):
  """One-hot (or relaxed) action (..., A) -> scalar f, through hidden layers `features`."""
  features: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, action):
    act = dict(relu=nn.relu, tanh=jnp.tanh)[self.activation]
    hidden = action
    for width in self.features:
      hidden = act(nn.Dense(width)(hidden))
    return nn.Dense(1)(hidden)[..., 0]


def exact_gradient(f, theta: jax.Array) -> jax.Array:
  """d/dtheta of sum_c softmax(theta)_c f(e_c): every action through the network.

  Args:
    f: maps (A, A) one-hot rows to (A,) scalars.
    theta: (A,) logits.

  Returns:
    (A,) gradient.
  """
  values = f(jnp.eye(theta.shape[-1], dtype=jnp.float32))  # (A,) f(e_c), constants in theta.
  return jax.grad(lambda t: jnp.dot(jax.nn.softmax(t), values))(theta)


def estimated_gradients(f, theta: jax.Array, keys: jax.Array, *, temperature: float,
                        chunk: int = 50) -> dict[str, jax.Array]:
  """Gumbel-softmax gradient estimates of both kinds, averaged over the keys.

  Args:
    f: maps (A,) relaxed or one-hot actions to a scalar.
    theta: (A,) logits of p.
    keys: (R,) typed keys, one Gumbel draw each; R a multiple of `chunk`.
    temperature: tau of the Gumbel-softmax.
    chunk: draws vmapped at once; a scan sums the chunks, so memory stays
      O(chunk) for any R.

  Returns:
    {'straight_through': (A,), 'relaxed': (A,)} mean estimates over the R draws.
  """

  def one(key):
    def surrogate(t, kind):
      log_probs = jax.nn.log_softmax(t)[None]  # (1, A)
      codes, soft = gmvq.gumbel_softmax_straight_through(key, log_probs, temperature)
      return f((codes if kind == "straight_through" else soft)[0])
    return {kind: jax.grad(surrogate)(theta, kind) for kind in ESTIMATORS}

  def add_chunk(total, chunk_keys):
    grads = jax.vmap(one)(chunk_keys)
    return jax.tree.map(lambda t, g: t + jnp.sum(g, axis=0), total, grads), None

  chunk = min(chunk, keys.shape[0])
  if keys.shape[0] % chunk:
    raise ValueError(f"{keys.shape[0]} draws do not split into chunks of {chunk}.")
  zeros = {kind: jnp.zeros_like(theta) for kind in ESTIMATORS}
  total, _ = jax.lax.scan(add_chunk, zeros, keys.reshape((-1, chunk) + keys.shape[1:]))
  return {kind: grad / keys.shape[0] for kind, grad in total.items()}


def entropy_nats(theta: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(theta)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "num_repeats", "gumbel_temperature"))
def measure(model: RewardMLP, params, theta: jax.Array, key: jax.Array, *, num_repeats: int,
            gumbel_temperature: float) -> dict[str, jax.Array]:
  """Entropy, exact gradient norm and each estimator's bias at one logit vector theta (A,)."""
  f = lambda action: model.apply(params, action)
  exact = exact_gradient(f, theta)
  estimates = estimated_gradients(f, theta, jax.random.split(key, num_repeats),
                                  temperature=gumbel_temperature)
  # The spread of f over the actions sets the scale of every gradient of
  # this network (the exact one is J_softmax^T f); dividing by it puts
  # networks of different output scales on one axis.
  value_spread = jnp.std(f(jnp.eye(theta.shape[-1], dtype=jnp.float32)))
  out = dict(entropy=entropy_nats(theta), exact_norm=jnp.linalg.norm(exact),
             value_spread=value_spread)
  for kind, estimate in estimates.items():
    out[f"bias_{kind}"] = jnp.linalg.norm(estimate - exact)
  return out


def run(*, num_actions: int, hidden: Sequence[int], activation: str, num_sets: int,
        temperatures: np.ndarray, logit_scale: float, gumbel_temperature: float,
        num_repeats: int, num_repeats_reference: int, seed: int) -> dict[str, np.ndarray]:
  """Every (set, temperature) point; arrays of shape (num_sets, num_temperatures).

  Each set draws its own MLP and logits; the temperatures divide the logits.
  The vmaps run all points in one compiled call per repeat count.
  """
  model = RewardMLP(tuple(hidden), activation)
  root = jax.random.key(seed)
  init_keys, logit_keys, noise_keys, reference_keys = (
      jax.random.split(k, num_sets) for k in jax.random.split(root, 4))
  sample = jnp.zeros((num_actions,), jnp.float32)
  params = jax.vmap(lambda k: model.init(k, sample))(init_keys)  # Stacked over sets.
  logits = logit_scale * jax.vmap(lambda k: jax.random.normal(k, (num_actions,)))(logit_keys)
  thetas = logits[:, None, :] / jnp.asarray(temperatures, jnp.float32)[None, :, None]

  def sweep(keys, repeats):
    per_point = functools.partial(measure, model, num_repeats=repeats,
                                  gumbel_temperature=gumbel_temperature)
    # The same Gumbel draws at every temperature of a set: the sweep varies T only.
    over_temps = jax.vmap(per_point, in_axes=(None, 0, None))
    return jax.device_get(jax.vmap(over_temps)(params, thetas, keys))

  results = {name: np.asarray(v) for name, v in sweep(noise_keys, num_repeats).items()}
  if num_repeats_reference:
    reference = sweep(reference_keys, num_repeats_reference)
    for kind in ESTIMATORS:
      results[f"bias_{kind}_reference"] = np.asarray(reference[f"bias_{kind}"])
  return results


def pearson(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  r, p = stats.pearsonr(np.ravel(x), np.ravel(y))
  return dict(r=float(r), p_value=float(p))


def correlations(results: dict[str, np.ndarray]) -> dict[str, dict]:
  """Pearson r of bias against entropy, for each estimator (and its reference).

  'per_set': one r per set, over its temperatures (each set is the paper's
  experiment: one network, one logit vector); 'pooled': over every point of
  every set, with the bias in units of the network's value spread;
  'pooled_raw': the same without that normalisation.
  """
  entropy = results["entropy"]
  figures = {}
  for name in results:
    if not name.startswith("bias_"):
      continue
    bias = results[name]
    per_set = [pearson(entropy[s], bias[s])["r"] for s in range(bias.shape[0])]
    figures[name[len("bias_"):]] = dict(
        per_set=per_set,
        per_set_median=float(np.median(per_set)),
        per_set_min=float(np.min(per_set)),
        per_set_max=float(np.max(per_set)),
        pooled=pearson(entropy, bias / results["value_spread"]),
        pooled_raw=pearson(entropy, bias),
    )
  return figures


def plot(results: dict[str, np.ndarray], figures: dict, *, num_repeats: int,
         num_repeats_reference: int, max_entropy: float):
  """Normalised bias against entropy, one panel per estimator, one colour per set."""
  figure, axes = common.new_figure(len(ESTIMATORS), figsize=(11, 4.4))
  entropy = results["entropy"]
  spread = results["value_spread"]
  colours = matplotlib.colormaps["tab10"]
  for axis, kind in zip(axes, ESTIMATORS):
    bias = results[f"bias_{kind}"] / spread
    reference = results.get(f"bias_{kind}_reference")
    for s in range(bias.shape[0]):
      colour = colours(s % 10)
      axis.scatter(entropy[s], bias[s], s=12, color=colour, alpha=0.8)
      if reference is not None:
        order = np.argsort(entropy[s])
        axis.plot(entropy[s][order], (reference[s] / spread[s])[order], color=colour, lw=0.8,
                  alpha=0.7)
    slope, intercept = np.polyfit(entropy.ravel(), bias.ravel(), 1)
    line = np.linspace(0.0, max_entropy, 50)
    axis.plot(line, slope * line + intercept, color="black", lw=1.5, ls="--")
    stats_ = figures[kind]
    axis.set_title(f"{kind.replace('_', '-')}: pooled r = {stats_['pooled']['r']:.2f},"
                   f" per-set median r = {stats_['per_set_median']:.2f}", fontsize=10)
    axis.set_xlabel("entropy of p (nats)")
    axis.set_ylabel("bias / std of f over actions")
    axis.set_xlim(0.0, max_entropy * 1.02)
  caption = (f"dots: mean of {num_repeats} estimates; lines: mean of {num_repeats_reference}"
             if num_repeats_reference else f"dots: mean of {num_repeats} estimates")
  figure.suptitle("Gumbel-softmax gradient bias against posterior entropy (GM-VQ paper, Fig. 3)\n"
                  f"{caption}; one colour per (MLP, logits) set; dashed: least squares",
                  fontsize=10)
  figure.tight_layout()
  return figure


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  num_sets, num_temps = _NUM_SETS.value, _NUM_TEMPERATURES.value
  reference = _NUM_REPEATS_REFERENCE.value
  if _SMOKE.value:
    num_sets, num_temps, reference = 3, 5, min(reference, 200)
  low, high = (float(t) for t in _T_RANGE.value)
  temperatures = np.geomspace(low, high, num_temps)
  hidden = [int(h) for h in _HIDDEN.value]
  settings = dict(num_actions=_NUM_ACTIONS.value, hidden=hidden, activation=_ACTIVATION.value,
                  num_sets=num_sets, temperatures=temperatures.tolist(),
                  logit_scale=_LOGIT_SCALE.value, gumbel_temperature=_GUMBEL_TEMPERATURE.value,
                  num_repeats=_NUM_REPEATS.value, num_repeats_reference=reference,
                  seed=_SEED.value)
  results = run(**dict(settings, temperatures=temperatures))
  figures = correlations(results)
  max_entropy = float(np.log(_NUM_ACTIONS.value))
  figure = plot(results, figures, num_repeats=_NUM_REPEATS.value,
                num_repeats_reference=reference, max_entropy=max_entropy)
  png = common.save_figure(figure, _OUTPUT_DIR.value, NAME)
  points = [dict(set=s, temperature=float(temperatures[t]),
                 **{name: float(values[s, t]) for name, values in results.items()})
            for s in range(num_sets) for t in range(num_temps)]
  payload = dict(
      experiment="Gumbel-softmax gradient bias vs posterior entropy (GM-VQ paper, Fig. 3, App. A.1)",
      command=common.command_line(),
      smoke=_SMOKE.value,
      settings=settings,
      pearson=figures,
      paper_pearson_r=0.77,
      entropy_units="nats",
      bias_definition="|| mean over repeats of the estimated gradient - exact gradient ||_2,"
                      " gradients with respect to the logits theta = l / T",
      max_entropy=max_entropy,
      points=points,
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(_OUTPUT_DIR.value, NAME, payload)
  for kind, stats_ in figures.items():
    print(f"{kind}: pooled r = {stats_['pooled']['r']:.3f} (p = {stats_['pooled']['p_value']:.1e}),"
          f" per-set r median {stats_['per_set_median']:.3f}"
          f" [{stats_['per_set_min']:.3f}, {stats_['per_set_max']:.3f}]")
  print(f"Wrote {png} and {path} in {clock.seconds():.1f}s.")


if __name__ == "__main__":
  app.run(main)
