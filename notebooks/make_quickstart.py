"""Writes notebooks/quickstart.ipynb from the cells below: `python notebooks/make_quickstart.py`.

The notebook is committed; edit the cells here and regenerate, so its source
stays reviewable as plain Python. Cells tagged 'figure' must draw a picture
(tests/test_notebook.py checks each produced an image/png output).
"""

import os

import nbformat
from nbformat import v4

CELLS = [
    ("markdown", None, r"""# gmvq_jax quickstart: GM-VQ and Gaussian Quant in a few minutes

This notebook trains the two tokenizers of `gmvq_jax` on the photographs that
scikit-image ships (no download):

1. **GM-VQ** (a Gaussian-mixture VQ-VAE trained with the aggregated-posterior
   "ALBO" objective): originals against reconstructions, the codebook usage,
   the training curves.
2. **GQ** (Gaussian Quant): a Gaussian VAE trained under the Target Divergence
   Constraint (TDC), converted offline to a VQ-VAE with a fixed N(0, I)
   codebook; then the per-token KL of a plain Gaussian VAE against the TDC one.

Run it top to bottom. On the project's 2-core development CPU, shared with
other jobs, the whole notebook ran in 20 minutes (GM-VQ's 1000 steps at
1.3 steps/s, GQ's 1200 at 7.5 steps/s); a GPU or TPU runtime is faster. With the environment variable `GMVQ_SMOKE=1`
every run shrinks to a few steps (the test suite executes it that way)."""),
    ("code", None, r"""# Install the library. In Colab, clone the repository first, in a cell of its own:
#   !git clone <URL of this repository> gmvq_jax
#   %cd gmvq_jax
# Locally, open this notebook from inside a clone (with its .venv if you made one).
import importlib.util
import os
import subprocess
import sys

REPO = os.getcwd() if os.path.exists("setup.py") else os.path.dirname(os.getcwd())
if importlib.util.find_spec("gmvq_jax") is None:
  # No -U: pip keeps each installed package that setup.py's ranges admit, so
  # Colab's GPU/TPU build of JAX stays (tests/test_install.py checks this).
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", REPO])
# A fresh editable install is seen only by new interpreters; this one needs the path
# (also for `configs/` and `experiments/`, which live beside the package).
if REPO not in sys.path:
  sys.path.insert(0, REPO)"""),
    ("code", None, r"""%matplotlib inline
import json
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

from configs import gmvq_demo, gq_demo
from experiments import common
from gmvq_jax import conversion, evaluation, train_lib

SMOKE = os.environ.get("GMVQ_SMOKE") == "1"  # Seconds-long runs (what the tests do).
WORKDIR = tempfile.mkdtemp(prefix="gmvq_quickstart_")
print("devices:", jax.devices(), "| smoke run" if SMOKE else "", "| workdir:", WORKDIR)"""),
    ("markdown", None, r"""## 1. GM-VQ on the embedded photographs

`configs/gmvq_demo.py`: 32x32 crops, an 8x8 grid of codes from a codebook of
C = 1024 codes of dimension 64, "GM-VQ + Entropy" weights (beta = 10). We
train 1000 steps of 64 crops here (the README's demo runs 2000); the test
crops come from photographs held out of training."""),
    ("code", None, r"""gmvq_config = gmvq_demo.get_config("smoke" if SMOKE else None)
if not SMOKE:
  gmvq_config.num_steps = 1000
gmvq_dir = os.path.join(WORKDIR, "gmvq")
gmvq_figures = train_lib.train_and_evaluate(gmvq_config, gmvq_dir)
print(json.dumps(gmvq_figures, indent=2))"""),
    ("code", ["figure"], r"""# Originals (top) against reconstructions (bottom), from the saved checkpoint.
config, state, dataset = evaluation.restore_run(gmvq_dir)
eval_fn = train_lib.make_eval_fn(config)  # Compiled once, used again below.
_, pairs = train_lib.evaluate(config, state, dataset, num_images=8, step_fn=eval_fn)
fig, axes = plt.subplots(2, pairs.shape[1], figsize=(1.5 * pairs.shape[1], 3.3))
for row, title in enumerate(("original", "reconstruction")):
  for col in range(pairs.shape[1]):
    axes[row, col].imshow(np.clip(pairs[row, col], 0.0, 1.0))
    axes[row, col].axis("off")
  axes[row, 0].set_title(title, loc="left", fontsize=9)
plt.show()"""),
    ("code", ["figure"], r"""# Codebook usage: how often each code is the argmax on the test crops.
counts = np.zeros(config.quantizer.num_codes)
batch = config.eval_batch_size
for images in dataset.eval_batches(batch):
  real = images.shape[0]
  mask = (np.arange(batch) < real).astype(np.float32)
  images = np.concatenate([images, np.zeros((batch - real,) + images.shape[1:], images.dtype)])
  sums, _ = eval_fn(state, images, mask)
  counts += np.asarray(sums["code_counts"])
used = int(np.sum(counts > 0))
fig, ax = plt.subplots(figsize=(9, 3.2))
ax.bar(np.arange(counts.size), np.sort(counts)[::-1], width=1.0)
ax.set_yscale("log")
ax.set_xlabel("codes, most used first")
ax.set_ylabel("test vectors")
ax.set_title(f"{used} of {counts.size} codes in use; hard perplexity"
             f" {gmvq_figures['hard_perplexity']:.1f}")
plt.show()"""),
    ("code", ["figure"], r"""# Training curves from WORKDIR/metrics.jsonl (one JSON object per logged step).
with open(os.path.join(gmvq_dir, "metrics.jsonl")) as f:
  train_log = [r for r in map(json.loads, f) if r["split"] == "train"]
steps = [r["step"] for r in train_log]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for ax, name in zip(axes, ("recon", "kl", "qbar_perplexity")):
  ax.plot(steps, [r[name] for r in train_log], marker=".")
  ax.set_xlabel("step")
  ax.set_title(name)
axes[0].set_yscale("log")
plt.show()"""),
    ("markdown", None, r"""## 2. GQ: a Gaussian VAE under TDC, converted to a VQ-VAE

`configs/gq_demo.py`: the latent grid is 8x8 of c = 16 channels, grouped into
tokens of m = 8 channels; TDC pushes every token's KL towards log2 K = 12
bits. The conversion then samples K = 4096 codewords from N(0, I) and
quantizes each token's posterior mean: 128 tokens of 12 bits, 1.5 bits per
pixel. Brief training here (1200 steps of 32)."""),
    ("code", None, r"""gq_config = gq_demo.get_config("smoke" if SMOKE else None)
if not SMOKE:
  gq_config.num_steps = 1200
  gq_config.batch_size = 32
gq_dir = os.path.join(WORKDIR, "gq")
print(json.dumps(train_lib.train_and_evaluate(gq_config, gq_dir), indent=2))"""),
    ("code", ["figure"], r"""# The offline conversion: tokens, a report, and originals / from the means / from the tokens.
report = conversion.convert(gq_dir, num_images=8, overwrite=True)  # Re-running replaces them.
print({k: report[k] for k in ("psnr_gaussian", "psnr_vq", "psnr_drop_db", "bpp", "code_usage")})
picture = plt.imread(os.path.join(gq_dir, conversion.PICTURE_NAME))
plt.figure(figsize=(10, 4))
plt.imshow(picture)
plt.axis("off")
plt.title("originals; decoded from posterior means; decoded from"
          f" {gq_config.quantizer.log2_codebook_size}-bit tokens", fontsize=9)
plt.show()"""),
    ("code", None, r"""# A plain Gaussian VAE on the same budget: the same model and loss with the TDC
# multipliers frozen at 1 (factor = 1.0) and a fixed KL weight; 0.001 puts its median
# rate near log2 K = 12 bits (experiments/tdc_spread.py measures the same comparison).
vae_config = gq_config.copy_and_resolve_references()
vae_config.quantizer.factor = 1.0
vae_config.quantizer.kl_weight = 0.001
vae_state, _, _ = common.train_in_memory(vae_config)
gq_config_saved, gq_state, gq_data = evaluation.restore_run(gq_dir)
rates = {
    "plain Gaussian VAE": common.gaussian_test_rates(vae_config, vae_state, gq_data)[0],
    "TDC": common.gaussian_test_rates(gq_config_saved, gq_state, gq_data)[0],
}
for name, bits in rates.items():
  s = common.spread(bits)
  print(f"{name:>18}: per-token KL {s['min']:.2f} .. {s['max']:.2f} bits,"
        f" 1-99% {s['p1']:.2f} .. {s['p99']:.2f}, median {s['p50']:.2f}")"""),
    ("code", ["figure"], r"""# Per-token KL bits on the test crops: TDC squeezes them around log2 K.
target, tolerance = gq_config.quantizer.log2_codebook_size, gq_config.quantizer.tolerance
edges = common.histogram_edges(list(rates.values()), 0.25)
plt.figure(figsize=(9, 3.5))
for name, bits in rates.items():
  plt.hist(bits.ravel(), bins=edges, histtype="stepfilled", alpha=0.5, label=name)
plt.axvspan(target - tolerance, target + tolerance, color="black", alpha=0.12,
            label=f"log2 K = {target} +- {tolerance}")
plt.yscale("log")
plt.xlabel("KL of a token (bits)")
plt.ylabel("test tokens")
plt.legend()
plt.show()"""),
    ("markdown", None, r"""## Next

- `python -m launch.train --config=configs/gmvq_demo.py --workdir=DIR` and
  `python -m launch.quantize --workdir=DIR` run the same steps from a shell.
- `experiments/` has one script per experiment of the two papers (gradient
  bias of the Gumbel-softmax, the TDC spread, ...); `experiments/README.md`
  lists their commands and what they measured."""),
]


def build() -> nbformat.NotebookNode:
  cells = []
  for index, (kind, tags, source) in enumerate(CELLS):
    cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
    cell.id = f"cell-{index:02d}"  # Stable ids: regenerating changes nothing that did not change.
    if tags:
      cell.metadata["tags"] = tags
    cells.append(cell)
  notebook = v4.new_notebook(cells=cells)
  notebook.metadata["kernelspec"] = dict(name="python3", display_name="Python 3",
                                         language="python")
  notebook.metadata["language_info"] = dict(name="python")
  notebook.metadata["colab"] = dict(provenance=[])
  return notebook


def main():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.ipynb")
  notebook = build()
  nbformat.validate(notebook)
  with open(path, "w", encoding="utf-8") as f:
    nbformat.write(notebook, f)
  print(f"Wrote {path}.")


if __name__ == "__main__":
  main()
