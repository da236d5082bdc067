"""Loading the official SimCLR TF2 checkpoints and SavedModels (google-research/simclr `tf2/`).

1. Read: a training checkpoint (a model_dir holding a `checkpoint` file, or a `ckpt-N` prefix) or a
   SavedModel folder (`saved_model/`, `saved_model/<n>/`, or the folder above them). Both store a
   `TrackableObjectGraph`; walking it from its `model` node gives every variable at its object path,
   e.g. `model/resnet_model/block_groups/0/layers/0/projection_layers/0/conv2d/kernel`, whatever key
   the file stores it under (a SavedModel uses `trainable_variables_list/<i>/...`). Optimizer slots,
   `global_step` and `save_counter` are not below `model`, so they are never read.
2. Infer the architecture from those paths and shapes (`ReferenceArchitecture`).
3. Map each variable of this package's `SimCLRModel` to its reference path and assign it. A model
   variable that the checkpoint lacks, or a checkpoint variable that nothing takes, is an error
   listing them all; the only parts that may start fresh are the ones the caller names, and a
   projection head absent from the checkpoint (SimCLRv1 releases): the returned report says so.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_med.checkpoints import native
from simclr_med.config import ModelConfig
from simclr_med.errors import UserError
from simclr_med.models.projection_head import LinearLayer
from simclr_med.models.simclr import SimCLRModel
from simclr_med.models.resnet import (BLOCKS_PER_GROUP, BOTTLENECK_MIN_DEPTH, CIFAR_STEM_MAX_SIZE,
                               SK_MIN_DIM, BasicBlock, BatchNormRelu, BottleneckBlock,
                               FixedPaddingConv2D, SelectiveKernel)

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
RESNET = "model/resnet_model"
STEM = f"{RESNET}/initial_conv_relu_max_pool"
PROJECTION_HEAD = "model/_projection_head/linear_layers"
SUPERVISED_HEAD = "model/supervised_head/linear_layer"
# The flag help of the reference recommends this ratio; the v2 `sk1` releases use it.
RECOMMENDED_SK_RATIO = 0.0625
GROUP_BASE_FILTERS = (64, 128, 256, 512)

# Edges the Keras SavedModel serializer adds to every layer: lists of the same variables and
# functions under other names. The reference's own attribute paths never use these names.
_SERIALIZER_EDGES = frozenset({
    "variables", "trainable_variables", "non_trainable_variables", "regularization_losses",
    "keras_api", "metrics", "layer_regularization_losses", "layer_metrics", "__call__",
    "call_and_return_all_conditional_losses", "call_and_return_conditional_losses",
    "activity_regularizer_fn", "signatures"})

# Positions in the reference's layer lists. Layers without weights (identity, pooling, padding,
# DropBlock) take positions too, which is why the numbers have gaps.
_BASIC_RESIDUAL = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3}
_BOTTLENECK_RESIDUAL = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}
_BOTTLENECK_SK_RESIDUAL = {"conv1": 0, "bn1": 1, "conv2": 3, "conv3": 5, "bn3": 6}
_SELECTIVE_KERNEL_PARTS = {"branches_conv": "conv2d_fixed_padding",
                           "branches_bn": "batch_norm_relu", "squeeze_conv": "conv2d_0",
                           "squeeze_bn": "batch_norm_relu_1", "mixing_conv": "conv2d_1"}
_VARIABLE_NAMES = ((keras.layers.BatchNormalization, ("gamma", "beta", "moving_mean",
                                                      "moving_variance")),
                   (keras.layers.Conv2D, ("kernel",)),
                   (keras.layers.Dense, ("kernel", "bias")))


class ReferenceCheckpointError(UserError, ValueError):
    """The checkpoint cannot be read, or does not fit the model; the message says why and where."""


# ---------------------------------------------------------------------------------------------
# 1. Reading


@dataclasses.dataclass(frozen=True)
class ReferenceVariables:
    """The variables below `model` of a reference checkpoint, by object path."""

    source: str  # the path the user gave
    prefix: str  # the checkpoint prefix read (`.../ckpt-3`, `.../variables/variables`)
    storage_keys: dict[str, str]  # object path -> key in the file
    shapes: dict[str, tuple[int, ...]]  # object path -> shape
    reader: tf.train.CheckpointReader

    def read(self, path: str) -> np.ndarray:
        try:
            return self.reader.get_tensor(self.storage_keys[path])
        except (tf.errors.OpError, IndexError, ValueError) as error:
            raise ReferenceCheckpointError(
                f"{_data_files(self.prefix)}: cannot read {path} (truncated or corrupt checkpoint "
                f"data?): {error}") from error


def _data_files(prefix: str) -> str:
    return ", ".join(tf.io.gfile.glob(prefix + ".data-*")) or prefix + ".data-*"


def _saved_model_dir(folder: str) -> Optional[str]:
    """`folder` if it holds a SavedModel, else its highest-numbered `<n>/` holding one (the
    reference exports to `saved_model/<global_step>/`), else the same below `folder/saved_model`."""
    if tf.io.gfile.exists(os.path.join(folder, "saved_model.pb")):
        return folder
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(folder)]
    steps = [int(name) for name in names if name.isdigit()
             and tf.io.gfile.exists(os.path.join(folder, name, "saved_model.pb"))]
    if steps:
        return os.path.join(folder, str(max(steps)))
    inner = os.path.join(folder, "saved_model")
    return _saved_model_dir(inner) if tf.io.gfile.isdir(inner) else None


def resolve_prefix(path: str) -> str:
    """The checkpoint prefix behind `path`. A folder with a `checkpoint` state file (a model_dir)
    wins over a SavedModel in the same folder: it is what the reference's own training wrote."""
    if tf.io.gfile.isdir(path) and not tf.io.gfile.exists(os.path.join(path, "checkpoint")):
        saved_model = _saved_model_dir(path)
        if saved_model is None:
            raise ReferenceCheckpointError(
                f"{path}: no `checkpoint` file, saved_model.pb, saved_model/ or saved_model/<n>/ "
                "found: not a checkpoint folder or SavedModel")
        return os.path.join(saved_model, "variables", "variables")
    try:
        prefix = native.resolve_checkpoint(path)
    except Exception as error:  # a damaged state file fails in the text-proto parser
        raise ReferenceCheckpointError(f"{os.path.join(path, 'checkpoint')}: cannot parse: "
                                       f"{error}") from error
    if prefix is None:
        raise ReferenceCheckpointError(
            f"{path}: no checkpoint there (no {path}.index, or its `checkpoint` file names "
            "none that exists)")
    return prefix


def _open(prefix: str) -> tf.train.CheckpointReader:
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise ReferenceCheckpointError(
            f"{prefix}.index: cannot open checkpoint (truncated or corrupt?): {error}") from error


def _object_graph(reader: tf.train.CheckpointReader,
                  prefix: str) -> Optional[trackable_object_graph_pb2.TrackableObjectGraph]:
    """The object graph, or None for a name-based (TF1) checkpoint, which has none."""
    if not reader.has_tensor(GRAPH_KEY):
        return None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor(GRAPH_KEY))
    except Exception as error:  # protobuf DecodeError, or a data-file read error
        raise ReferenceCheckpointError(
            f"{_data_files(prefix)}: the object graph cannot be read (truncated or corrupt "
            f"checkpoint?): {error}") from error
    return graph


def _child(graph, node_id: int, name: str) -> Optional[int]:
    return next((c.node_id for c in graph.nodes[node_id].children if c.local_name == name), None)


def _variable_paths(graph) -> dict[str, str]:
    """Object path -> storage key of every variable below the root's `model` child.

    Breadth-first along attribute edges, skipping the Keras serializer's extra lists, so each
    variable is found at the path the reference's training checkpoint uses for it.
    """
    model = _child(graph, 0, "model")
    paths: dict[str, str] = {}
    queue = collections.deque([(model, "model")])
    seen = {model}
    while queue:
        node_id, path = queue.popleft()
        for attribute in graph.nodes[node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                paths[path] = attribute.checkpoint_key
        for child in graph.nodes[node_id].children:
            if child.local_name not in _SERIALIZER_EDGES and child.node_id not in seen:
                seen.add(child.node_id)
                queue.append((child.node_id, f"{path}/{child.local_name}"))
    return paths


def _has_reference_model(graph) -> bool:
    model = _child(graph, 0, "model")
    return model is not None and _child(graph, model, "resnet_model") is not None


def read_reference_variables(path: str) -> ReferenceVariables:
    prefix = resolve_prefix(path)
    reader = _open(prefix)
    graph = _object_graph(reader, prefix)
    if graph is None:
        raise ReferenceCheckpointError(
            f"{prefix}: a name-based (TF1) checkpoint without object graph; use the TF2 release "
            "(gs://simclr-checkpoints-tf2/...) of this model instead")
    if not _has_reference_model(graph):
        raise ReferenceCheckpointError(
            f"{prefix}: no `model/resnet_model` object: not a SimCLR TF2 checkpoint")
    storage_keys = _variable_paths(graph)
    stored_shapes = reader.get_variable_to_shape_map()
    missing = sorted(p for p, key in storage_keys.items() if key not in stored_shapes)
    if missing:
        raise ReferenceCheckpointError(f"{prefix}: the object graph names variables the file does "
                                       f"not hold (corrupt checkpoint?): {missing}")
    shapes = {p: tuple(stored_shapes[key]) for p, key in storage_keys.items()}
    return ReferenceVariables(path, prefix, storage_keys, shapes, reader)


def is_reference_checkpoint(path: str) -> bool:
    """True for an official SimCLR TF2 checkpoint or SavedModel (also a TF1 SimCLR checkpoint, so
    that loading it fails with a clear message); False for anything else, e.g. this package's own
    model folders. A checkpoint that exists but cannot be read raises ReferenceCheckpointError."""
    try:
        prefix = resolve_prefix(path)
    except ReferenceCheckpointError:
        return False
    reader = _open(prefix)
    graph = _object_graph(reader, prefix)
    if graph is None:
        return any(key.startswith("base_model/") for key in reader.get_variable_to_shape_map())
    return _has_reference_model(graph)


# ---------------------------------------------------------------------------------------------
# 2. Inferring the architecture


@dataclasses.dataclass(frozen=True)
class ReferenceArchitecture:
    """What a reference checkpoint's keys and shapes say about the network that wrote it."""

    resnet_depth: int
    width_multiplier: float
    sk_ratio: float
    cifar_stem: bool
    num_proj_layers: int  # 0: no projection head in the checkpoint (SimCLRv1 releases)
    proj_out_dim: int  # 0 when there is no projection head
    num_classes: int  # 0: no supervised head
    supervised_input_dim: int  # 0 when there is no supervised head
    assumptions: tuple[str, ...] = ()  # what the checkpoint cannot tell and was assumed

    def ft_proj_selector(self, preferred: int = 0) -> int:
        """The projection-head layer that can feed the supervised head: `preferred` if its width
        fits (hidden layers are as wide as the backbone, so this is often ambiguous), else the
        first one that does."""
        if not self.num_classes:
            return preferred
        widths = _head_widths(_backbone_dim(self.resnet_depth, self.width_multiplier),
                              self.num_proj_layers, self.proj_out_dim)
        fits = [j for j, width in enumerate(widths) if width == self.supervised_input_dim]
        if not fits:
            raise ReferenceCheckpointError(
                f"the supervised head takes {self.supervised_input_dim} features, which no "
                f"projection-head layer gives (widths {widths})")
        return preferred if preferred in fits else fits[0]

    def model_config(self, image_size: Optional[int] = None,
                     base: ModelConfig = ModelConfig()) -> ModelConfig:
        """A ModelConfig building this network. `image_size` defaults to 32 for the CIFAR stem and
        224 otherwise; settings a checkpoint does not hold (BN momentum, and the projection head
        when it has none) come from `base`."""
        size = image_size or (CIFAR_STEM_MAX_SIZE if self.cifar_stem else 224)
        if (size <= CIFAR_STEM_MAX_SIZE) != self.cifar_stem:
            raise ReferenceCheckpointError(
                f"checkpoint has {_stem_text(self.cifar_stem)}; image_size={size} asks for "
                f"{_stem_text(not self.cifar_stem)}")
        head = {}
        if self.num_proj_layers:
            head = dict(proj_head_mode="nonlinear", num_proj_layers=self.num_proj_layers,
                        proj_out_dim=self.proj_out_dim)
        return dataclasses.replace(
            base, resnet_depth=self.resnet_depth, width_multiplier=self.width_multiplier,
            sk_ratio=self.sk_ratio, image_size=size,
            ft_proj_selector=self.ft_proj_selector(base.ft_proj_selector), **head)


def _backbone_dim(depth: int, width_multiplier: float) -> int:
    expansion = 4 if depth >= BOTTLENECK_MIN_DEPTH else 1
    return int(GROUP_BASE_FILTERS[-1] * width_multiplier) * expansion


def _head_widths(backbone_dim: int, num_layers: int, out_dim: int) -> list[int]:
    """Widths of [head input, layer 1, ..., layer n], the list `ft_proj_selector` indexes."""
    return [backbone_dim] * max(num_layers, 1) + ([out_dim] if num_layers else [])


def _stem_text(cifar: bool) -> str:
    return ("the CIFAR stem (image_size <= 32)" if cifar
            else f"the ImageNet stem (image_size > {CIFAR_STEM_MAX_SIZE})")


def _simplest(fits: Callable[[float], bool], low: float, high: float) -> Optional[float]:
    """The positive value with the fewest decimals in [low, high) for which `fits` holds."""
    for decimals in range(9):
        scale = 10 ** decimals
        value = max(math.ceil(low * scale - 1e-9), 1) / scale
        if value < high and fits(value):
            return value
    return low if fits(low) else None


def _indices(shapes: dict, pattern: str) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Integer groups of every path matching `pattern` -> that variable's shape."""
    found = {}
    for path, shape in shapes.items():
        match = re.fullmatch(pattern, path)
        if match:
            found[tuple(int(g) for g in match.groups())] = shape
    return found


def _infer_depth(shapes: dict) -> tuple[int, bool]:
    """Depth from the blocks per group; bottleneck or basic from the residual list's name."""
    blocks = {kind: _indices(shapes, rf"{RESNET}/block_groups/(\d+)/layers/(\d+)/{kind}/0/"
                                     r"conv2d/kernel")
              for kind in ("conv2d_bn_layers", "conv_relu_dropblock_layers")}
    bottleneck = bool(blocks["conv_relu_dropblock_layers"])
    if bottleneck == bool(blocks["conv2d_bn_layers"]):
        raise ReferenceCheckpointError("the checkpoint has " + (
            "both basic and bottleneck blocks" if bottleneck else "no ResNet blocks"))
    found = blocks["conv_relu_dropblock_layers" if bottleneck else "conv2d_bn_layers"]
    counts = tuple(len([b for g, b in found if g == group]) for group in range(4))
    layers_per_block = 3 if bottleneck else 2
    depth = layers_per_block * sum(counts) + 2
    if (BLOCKS_PER_GROUP.get(depth) != counts or (depth >= BOTTLENECK_MIN_DEPTH) != bottleneck
            or sorted(found) != [(g, b) for g in range(4) for b in range(counts[g])]):
        raise ReferenceCheckpointError(
            f"blocks per group {counts} ({'bottleneck' if bottleneck else 'basic'}) match no "
            f"ResNet depth this package builds ({sorted(BLOCKS_PER_GROUP)})")
    return depth, bottleneck


def _infer_width(shapes: dict, bottleneck: bool) -> float:
    kind = "conv_relu_dropblock_layers" if bottleneck else "conv2d_bn_layers"
    filters = [shapes[f"{RESNET}/block_groups/{g}/layers/0/{kind}/0/conv2d/kernel"][-1]
               for g in range(4)]
    low = max(f / base for f, base in zip(filters, GROUP_BASE_FILTERS))
    high = min((f + 1) / base for f, base in zip(filters, GROUP_BASE_FILTERS))
    width = _simplest(lambda w: [int(base * w) for base in GROUP_BASE_FILTERS] == filters,
                      low, high)
    if width is None:
        raise ReferenceCheckpointError(f"block filters {filters} fit no width multiplier")
    return width


def _infer_sk_ratio(shapes: dict, bottleneck: bool) -> tuple[float, tuple[str, ...]]:
    """0 without selective kernels / ResNet-D shortcuts; otherwise a ratio giving every SK squeeze
    layer its width m = max(int(f * sk_ratio), 32), preferably the recommended 0.0625."""
    squeeze = _indices(shapes, rf"{RESNET}/block_groups/(\d+)/layers/(\d+)/"
                               r"conv_relu_dropblock_layers/3/conv2d_0/kernel")
    resnet_d = _indices(shapes, rf"{RESNET}/block_groups/(\d+)/layers/0/"
                                r"(?:projection_layers|shortcut_layers)/([12])/conv2d/kernel")
    if not squeeze and not resnet_d:
        return 0.0, ()
    dims = sorted({(shape[2], shape[3]) for shape in squeeze.values()})  # (f, m)

    def fits(ratio: float) -> bool:
        return all(max(int(f * ratio), SK_MIN_DIM) == m for f, m in dims)

    ratio = RECOMMENDED_SK_RATIO
    if not fits(ratio):
        low = max([m / f for f, m in dims if m > SK_MIN_DIM], default=0.0)
        high = min((max(m, SK_MIN_DIM) + 1) / f for f, m in dims)
        ratio = _simplest(fits, low, high)
        if ratio is None:
            raise ReferenceCheckpointError(
                f"selective-kernel squeeze widths (filters, width) {dims} fit no sk_ratio")
    if any(m > SK_MIN_DIM for _, m in dims):
        return ratio, ()
    reason = ("every selective-kernel squeeze layer has the minimum 32 channels" if bottleneck
              else "basic blocks have ResNet-D shortcuts but no selective kernels")
    return ratio, (f"sk_ratio cannot be read off ({reason}): assumed {ratio:g}; any ratio giving "
                   "the same widths builds the same network",)


def _infer_stem(shapes: dict) -> bool:
    """True for the CIFAR stem (one 3x3 convolution), False for the ImageNet stems (one 7x7, or
    three 3x3 for ResNet-D)."""
    convs = _indices(shapes, rf"{STEM}/(\d+)/conv2d/kernel")
    kernels = [shape for _, shape in sorted(convs.items())]
    if len(kernels) == 1 and kernels[0][0] in (3, 7):
        return kernels[0][0] == 3
    if len(kernels) == 3 and all(shape[0] == 3 for shape in kernels):
        return False
    raise ReferenceCheckpointError(f"unknown stem: convolution kernels {kernels}")


def infer_architecture_from_shapes(shapes: dict[str, tuple[int, ...]]) -> ReferenceArchitecture:
    depth, bottleneck = _infer_depth(shapes)
    sk_ratio, assumptions = _infer_sk_ratio(shapes, bottleneck)
    head = _indices(shapes, rf"{PROJECTION_HEAD}/(\d+)/dense/kernel")
    if sorted(head) != [(j,) for j in range(len(head))]:
        raise ReferenceCheckpointError(f"projection-head layers {sorted(head)} are not numbered "
                                       "0, 1, ...")
    supervised = shapes.get(f"{SUPERVISED_HEAD}/dense/kernel", (0, 0))
    return ReferenceArchitecture(
        resnet_depth=depth, width_multiplier=_infer_width(shapes, bottleneck), sk_ratio=sk_ratio,
        cifar_stem=_infer_stem(shapes), num_proj_layers=len(head),
        proj_out_dim=head[(len(head) - 1,)][-1] if head else 0,
        num_classes=supervised[1], supervised_input_dim=supervised[0], assumptions=assumptions)


def infer_architecture(path: str) -> ReferenceArchitecture:
    """The architecture of the official checkpoint or SavedModel at `path`."""
    return infer_architecture_from_shapes(read_reference_variables(path).shapes)


def _described(config: ModelConfig, num_classes: Optional[int],
               projection_head: bool) -> dict[str, tuple[str, object]]:
    """What decides a model's variables: name -> (text to print, value to compare).

    Width and SK ratio compare by the filter and squeeze widths they give, so two values that
    build the same network are equal.
    """
    filters = [int(base * config.width_multiplier) for base in GROUP_BASE_FILTERS]
    squeeze = ([max(int(f * config.sk_ratio), SK_MIN_DIM) for f in filters]
               if config.sk_ratio > 0 else 0)
    stem = _stem_text(config.image_size <= CIFAR_STEM_MAX_SIZE)
    described = {"resnet_depth": (f"resnet_depth={config.resnet_depth}", config.resnet_depth),
                 "width_multiplier": (f"width_multiplier={config.width_multiplier:g}", filters),
                 "sk_ratio": (f"sk_ratio={config.sk_ratio:g}", squeeze),
                 "stem": (stem, stem)}
    layers = {"none": 0, "linear": 1}.get(config.proj_head_mode, config.num_proj_layers)
    if projection_head:
        described["num_proj_layers"] = (f"num_proj_layers={layers}", layers)
        if layers:
            described["proj_out_dim"] = (f"proj_out_dim={config.proj_out_dim}",
                                         config.proj_out_dim)
    if num_classes is not None:
        described["num_classes"] = (f"num_classes={num_classes}", num_classes)
        if num_classes:
            widths = _head_widths(_backbone_dim(config.resnet_depth, config.width_multiplier),
                                  layers, config.proj_out_dim)
            dim = widths[min(config.ft_proj_selector, len(widths) - 1)]
            described["ft_proj_selector"] = (
                f"ft_proj_selector={config.ft_proj_selector} ({dim} features)", dim)
    return described


def architecture_mismatch(found: ReferenceArchitecture, wanted: ModelConfig,
                          num_classes: Optional[int] = None,
                          projection_head: bool = True) -> Optional[str]:
    """None if `wanted` builds the checkpoint's network, else one message naming every difference,
    e.g. "checkpoint has resnet_depth=50, width_multiplier=0.25; the requested model has
    resnet_depth=18, width_multiplier=1". `num_classes` None: the supervised heads are not
    compared; `projection_head` False (or no head in the checkpoint): nor are the projection heads.
    """
    own = found.model_config(None, base=wanted)
    projection_head = projection_head and found.num_proj_layers > 0
    have = _described(own, None if num_classes is None else found.num_classes, projection_head)
    want = _described(wanted, num_classes, projection_head)
    names = [name for name in have if have[name][1] != want.get(name, (None, None))[1]]
    if not names:
        return None
    return ("checkpoint has " + ", ".join(have[n][0] for n in names)
            + "; the requested model has " + ", ".join(want[n][0] for n in names if n in want))


# ---------------------------------------------------------------------------------------------
# 3. Mapping and assigning


def _expand(path: str, layer: keras.layers.Layer) -> list[tuple[str, keras.layers.Layer]]:
    """(reference path, Keras layer owning variables) for one of this package's layers."""
    if isinstance(layer, FixedPaddingConv2D):
        return [(f"{path}/conv2d", layer.conv)]
    if isinstance(layer, BatchNormRelu):
        return [(f"{path}/bn", layer.bn)]
    if isinstance(layer, SelectiveKernel):
        return [pair for attribute, name in _SELECTIVE_KERNEL_PARTS.items()
                for pair in _expand(f"{path}/{name}", getattr(layer, attribute))]
    if isinstance(layer, LinearLayer):
        return [(f"{path}/dense", layer.dense)] + (_expand(f"{path}/bn_relu", layer.bn)
                                                    if layer.bn else [])
    return [(path, layer)]


def _block_layers(path: str, block) -> list[tuple[str, keras.layers.Layer]]:
    if isinstance(block, BasicBlock):
        residual, positions, shortcut = "conv2d_bn_layers", _BASIC_RESIDUAL, "shortcut_layers"
    elif isinstance(block, BottleneckBlock):
        positions = _BOTTLENECK_SK_RESIDUAL if block.bn2 is None else _BOTTLENECK_RESIDUAL
        residual, shortcut = "conv_relu_dropblock_layers", "projection_layers"
    else:
        raise TypeError(f"no reference layout for {type(block).__name__}")
    pairs = [pair for attribute, i in positions.items()
             for pair in _expand(f"{path}/{residual}/{i}", getattr(block, attribute))]
    if block.shortcut is not None:
        # ResNet-D: padding and average pool (stride 2), or the pool alone, come first.
        first = (2 if block.shortcut.strides > 1 else 1) if block.shortcut.resnet_d else 0
        pairs += _expand(f"{path}/{shortcut}/{first}", block.shortcut.conv)
        pairs += _expand(f"{path}/{shortcut}/{first + 1}", block.shortcut.bn)
    return pairs


def reference_layers(model: SimCLRModel) -> list[tuple[str, keras.layers.Layer]]:
    """Every variable-owning layer of `model` with the reference object path of its counterpart."""
    stem = model.resnet.stem
    last = len(stem.convs) - 1
    pairs = []
    for j, (conv, bn) in enumerate(zip(stem.convs, stem.bns)):
        # The last stem conv is followed by the identity layer `initial_conv`, then its BN.
        pairs += _expand(f"{STEM}/{2 * j}", conv)
        pairs += _expand(f"{STEM}/{2 * j + (2 if j == last else 1)}", bn)
    for g, group in enumerate(model.resnet.block_groups):
        for b, block in enumerate(group.blocks):
            pairs += _block_layers(f"{RESNET}/block_groups/{g}/layers/{b}", block)
    for j, layer in enumerate(model.projection_head.linear_layers):
        pairs += _expand(f"{PROJECTION_HEAD}/{j}", layer)
    if model.supervised_head is not None:
        pairs += _expand(SUPERVISED_HEAD, model.supervised_head)
    return pairs


def reference_variables(model: SimCLRModel) -> dict[str, tf.Variable]:
    """Reference object path -> variable, for every variable of the (built) model."""
    mapping = {}
    for path, layer in reference_layers(model):
        names = next(names for kind, names in _VARIABLE_NAMES if isinstance(layer, kind))
        for name in names:
            variable = getattr(layer, name)
            if variable is not None:
                mapping[f"{path}/{name}"] = variable
    covered = {id(v) for v in mapping.values()}
    unmapped = [v.path for v in model.variables if id(v) not in covered]
    if unmapped:
        raise TypeError(f"model variables without a reference counterpart: {unmapped}")
    return mapping


@dataclasses.dataclass(frozen=True)
class LoadReport:
    source: str
    prefix: str
    loaded: int  # variables assigned
    messages: tuple[str, ...] = ()  # parts that start fresh or were skipped, assumptions made

    def __str__(self) -> str:
        return "; ".join((f"loaded {self.loaded} variables from {self.prefix}",) + self.messages)


def _head_paths(paths, start: int) -> set[str]:
    """The paths below projection-head layers `start`, `start + 1`, ..."""
    pattern = re.compile(rf"{re.escape(PROJECTION_HEAD)}/(\d+)/")
    return {p for p in paths if (m := pattern.match(p)) and int(m.group(1)) >= start}


def _load(model: SimCLRModel, refs: ReferenceVariables, projection_layers: Optional[int],
          include_supervised_head: bool) -> LoadReport:
    found = infer_architecture_from_shapes(refs.shapes)
    head_in_checkpoint = found.num_proj_layers > 0
    differences = architecture_mismatch(
        found, model.config, model.num_classes if include_supervised_head else None,
        projection_head=projection_layers is None)
    if differences:
        raise ReferenceCheckpointError(f"{refs.source}: {differences}")
    if not model.variables:
        model.build_for_image_size()
    wanted = reference_variables(model)
    skipped = set()  # checkpoint variables left out on purpose
    messages = list(found.assumptions)
    model_head = len(model.projection_head.linear_layers)
    keep = model_head if projection_layers is None else min(projection_layers, model_head)
    if not head_in_checkpoint:
        keep = 0
        if model_head:
            messages.append("the checkpoint has no projection head (a SimCLRv1 release): the "
                            "model's projection head starts fresh")
    elif keep < model_head or keep < found.num_proj_layers:
        messages.append(f"loaded {keep} of the checkpoint's {found.num_proj_layers} "
                        f"projection-head layers; the model's {model_head - keep} other "
                        "layer(s) start fresh")
    for path in _head_paths(wanted, keep):
        del wanted[path]
    skipped |= _head_paths(refs.shapes, keep)
    if not include_supervised_head:
        wanted = {p: v for p, v in wanted.items() if not p.startswith(SUPERVISED_HEAD)}
        skipped |= {p for p in refs.shapes if p.startswith(SUPERVISED_HEAD)}
        if found.num_classes or model.supervised_head is not None:
            messages.append("supervised head not loaded"
                            + (f" (checkpoint: {found.num_classes} classes)"
                               if found.num_classes else "")
                            + ("; the model's supervised head starts fresh"
                               if model.supervised_head else ""))
    _check_keys(refs, wanted, skipped)
    for path, variable in wanted.items():
        variable.assign(refs.read(path))
    return LoadReport(refs.source, refs.prefix, len(wanted), tuple(messages))


def _check_keys(refs: ReferenceVariables, wanted: dict[str, tf.Variable], skipped: set[str]):
    missing = sorted(set(wanted) - set(refs.shapes))
    unused = sorted(set(refs.shapes) - set(wanted) - skipped)
    wrong_shape = sorted(f"{p} (checkpoint {list(refs.shapes[p])}, model {list(v.shape)})"
                         for p, v in wanted.items()
                         if p in refs.shapes and tuple(refs.shapes[p]) != tuple(v.shape))
    problems = [f"{len(items)} {what}: " + ", ".join(items) for what, items in (
        ("model variables the checkpoint lacks", missing),
        ("checkpoint variables nothing in the model takes", unused),
        ("shape mismatches", wrong_shape)) if items]
    if problems:
        raise ReferenceCheckpointError(f"{refs.prefix}: " + "; ".join(problems))


def load_reference_weights(model: SimCLRModel, path: str, projection_layers: Optional[int] = None,
                           include_supervised_head: bool = True) -> LoadReport:
    """Assigns every variable of `model` from the official checkpoint or SavedModel at `path`.

    `projection_layers`: load only the first n projection-head layers (None: all; the model's and
    the checkpoint's must then agree). `include_supervised_head=False` leaves the model's supervised
    head as it is and ignores the checkpoint's (e.g. ImageNet's 1000 classes). Raises
    ReferenceCheckpointError naming every architecture difference, or every missing, unused or
    mis-shaped variable; nothing is assigned then.
    """
    return _load(model, read_reference_variables(path), projection_layers, include_supervised_head)


def convert_reference_checkpoint(source: str, output_dir: str, image_size: Optional[int] = None,
                                 base: ModelConfig = ModelConfig()
                                 ) -> tuple[native.ModelRecord, LoadReport]:
    """Builds the checkpoint's network, loads it and saves it in this package's format in
    `output_dir`: a CheckpointManager checkpoint of `native.make_checkpoint(model)` and
    `model_config.json` (with `source`). `base` supplies what a checkpoint does not hold."""
    if native.resolve_checkpoint(output_dir):
        raise ReferenceCheckpointError(f"{output_dir} already holds a checkpoint; choose an empty "
                                       "output folder")
    refs = read_reference_variables(source)
    found = infer_architecture_from_shapes(refs.shapes)
    config = found.model_config(image_size, base)
    model = SimCLRModel(config, found.num_classes)
    model.build_for_image_size()
    report = _load(model, refs, None, include_supervised_head=True)
    tf.train.CheckpointManager(native.make_checkpoint(model), output_dir,
                               max_to_keep=1).save()
    record = native.ModelRecord(model=config, num_classes=found.num_classes,
                                       task="multiclass" if found.num_classes else "",
                                       source=source)
    record.save(output_dir)
    return record, report
