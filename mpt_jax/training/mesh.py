"""Data parallelism over all local devices with ``jax.sharding``.

One mesh axis, ``"data"``, spans ``jax.devices()``. The batch is sharded along its
first dimension on that axis; the prompt tree, its optimizer state and the frozen
backbone are replicated. With one device (a laptop CPU) everything is a no-op in effect.
Model parallelism over the backbone is T5X's job (see ``mpt_jax.t5x_ext.partitioning``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of batch features: the leading (batch) dimension split over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host batch on the mesh, split along the batch dimension.

    Raises:
      ValueError: when the batch size does not divide evenly over the devices (no
        example is dropped or padded silently).
    """
    n = mesh.shape[DATA_AXIS]
    sizes = {k: np.shape(v)[0] for k, v in batch.items()}
    for name, size in sizes.items():
        if size % n:
            raise ValueError(
                f"batch feature {name!r} has batch size {size}, which does not divide over "
                f"{n} devices; choose a batch size that is a multiple of {n}"
            )
    return jax.device_put(dict(batch), batch_sharded(mesh))
