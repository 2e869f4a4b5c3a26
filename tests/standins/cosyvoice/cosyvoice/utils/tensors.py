"""Tensors for the stand-in: torch's when installed, else a numpy-backed look-alike."""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # the serving project does not install torch by default
    torch = None


class NumpyTensor:
    """The few tensor methods a caller of the upstream API may use on its outputs."""

    def __init__(self, array: Any) -> None:
        self._array = np.asarray(array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    def cpu(self) -> NumpyTensor:
        return self

    def detach(self) -> NumpyTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self._array

    def squeeze(self, dim: int | None = None) -> NumpyTensor:
        return NumpyTensor(np.squeeze(self._array, axis=dim))

    def __len__(self) -> int:
        return len(self._array)


def tensor(array: Any) -> Any:
    data = np.ascontiguousarray(array)
    return torch.from_numpy(data) if torch is not None else NumpyTensor(data)


def to_numpy(value: Any) -> np.ndarray:
    """Accepts what the stand-in makes and what an adapter may hand back (numpy)."""
    if hasattr(value, "cpu"):
        return np.asarray(value.cpu().numpy())
    return np.asarray(value)
