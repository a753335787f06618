"""Installs gmvq_jax: `pip install -e .` (library), `pip install -e '.[test]'` (tests)."""

import setuptools

# The lower bounds are the oldest releases tested (CI's oldest environment,
# .ci/oldest.txt); CI's newest environment tests the newest releases. The JAX
# stack has no upper bounds: pip keeps an installed release that satisfies a
# range, so Colab's accelerator build of JAX survives `pip install -e .`, where
# a cap below it would replace it with a CPU wheel.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    # Workdirs and data_dirs as epath paths (local, gs://); its fsspec backend
    # reaches gs:// once the 'gcs' extra is installed.
    "etils[epath]>=1.9.1",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8.6",  # tfds.data_source reads ArrayRecord files without TensorFlow.
    "chex>=0.1.92",
    "dm-pix>=0.4.0",  # SSIM of every evaluation (0.4.0 through 0.4.5 run on JAX 0.10.2).
    "absl-py>=2.5",
    "ml_collections>=1.1",
    "numpy>=2.0",
    "scipy>=1.11",  # Scrambled Sobol points and the inverse normal CDF of the GQ codebook.
    "scikit-image>=0.26",  # Ships the photographs of the embedded demo dataset.
    "pillow>=10",  # Writes reconstruction PNGs.
    "matplotlib>=3.8",  # The comparison's curves and scatter plots (Agg backend, no display).
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow.
]

setuptools.setup(
    name="gmvq_jax",
    version="0.1.0",
    description=(
        "Probabilistic vector quantization of images in JAX/Flax: GM-VQ, GQ"
        " and the baselines they are measured against."
    ),
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["gmvq_jax", "gmvq_jax.*", "launch", "configs"]),
    python_requires=">=3.11",  # JAX 0.10.2 needs 3.11, JAX 0.11 and newer 3.12.
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # nbclient/nbformat/ipykernel: tests/test_notebook.py executes the quickstart notebook.
        # fsspec: tests/fake_gcs.py serves gs:// from memory (etils[epath] installs it too).
        "test": ["pytest>=8", "pytest-xdist>=3.8", "absl-py>=2.5", "nbclient>=0.10", "nbformat>=5.9",
                 "ipykernel>=6.29", "fsspec"],
        # gs:// workdirs: gcsfs for epath (without TensorFlow), google-cloud-storage
        # for Orbax's checkpoint listing; tensorstore has its own GCS client.
        "gcs": ["gcsfs", "google-cloud-storage"],
        "bench": ["torch==2.13.0"],
        # `python -m launch.prepare_data` builds TFDS datasets (reading needs neither):
        # importlib_resources is a TFDS build dependency its wheel does not declare.
        "prepare": ["tensorflow>=2.16", "importlib_resources>=6"],
    },
)
