"""Input pipelines: embedded demo photographs, TFDS datasets and the user's own images.

`make_dataset(name, image_size=..., seed=...)` is the entry point (`from_config`
for a training config); its batches
are float32 NumPy arrays on the host, in [0, 1].
"""

from gmvq_jax.data.registry import DATASET_NAMES
from gmvq_jax.data.registry import DataError
from gmvq_jax.data.registry import DatasetNotPreparedError
from gmvq_jax.data.registry import DEFAULT_IMAGE_SIZE
from gmvq_jax.data.registry import from_config
from gmvq_jax.data.registry import ImageDataset
from gmvq_jax.data.registry import make_dataset
from gmvq_jax.data.registry import validate_dataset_name

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "DataError",
    "DatasetNotPreparedError",
    "from_config",
    "ImageDataset",
    "make_dataset",
    "validate_dataset_name",
]
