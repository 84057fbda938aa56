"""Graph analysis and surgery for static quantization of a BERT-style encoder graph.

`exclusion_candidates` names the node sets that may stay in float, found by graph
structure (not exporter-specific names); `restore_float_readers` repairs what
onnxruntime.quantization does to the readers of a quantized tensor.

Measured on the demo MiniLM: quantizing every op naively collapses the embeddings
(mean cosine ≈ 0.33-0.41); keeping the attention mask (values near -3.4e38) and Softmax
in float only gets to ≈ 0.8 (the quantized Adds, Muls and LayerNorms cost the rest);
MatMuls only is ≈ 0.993, and keeping the FFN output projections in float too ≈ 0.996 at
twice the latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract


def restore_float_readers(
    model_path: Path, exclude_nodes: set[str], op_types: Sequence[str] | None
) -> int:
    """Give nodes that must stay float their float input back; return how many were fixed.

    When a tensor has a single quantized reader, onnxruntime rewires *every* reader to its
    DequantizeLinear output (with several, each quantized reader gets its own pair and the
    rest keep the float tensor). So an excluded node, or a residual Add next to the one
    quantized MatMul, would still see int8 noise. Undo that for excluded nodes and for op
    types outside `op_types`; drop the Q/DQ pairs (and their scales) nobody reads any more.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    allowed = set(op_types) if op_types else None

    def stays_float(node: onnx.NodeProto) -> bool:
        return node.name in exclude_nodes or (allowed is not None and node.op_type not in allowed)

    fixed = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not stays_float(node):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a quantized weight (DQ of an initializer): no float tensor to restore
            node.input[k] = q.input[0]
            fixed += 1
    if fixed:
        # Drop Q/DQ nodes whose outputs nobody reads any more (graph outputs count).
        while True:
            read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
            dead = [
                n
                for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)
            ]
            if not dead:
                break
            for n in dead:
                graph.node.remove(n)
        # ...and the scales/zero points only they used (onnxruntime warns about each).
        read = {i for n in graph.node for i in n.input}
        for init in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(init)
        onnx.save(model, str(model_path))
    return fixed


@dataclass(frozen=True)
class Exclusion:
    """One candidate set of nodes (and/or op types) left in float by static quantization."""

    name: str
    description: str
    exclude_nodes: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] | None = None  # None: every quantizable type


@dataclass
class _GraphRoles:
    """Node names of a BERT-style encoder graph, grouped by what they do."""

    mask: list[str] = field(default_factory=list)  # attention-mask arithmetic and its use
    softmax: list[str] = field(default_factory=list)
    layernorm: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)  # up to the first LayerNorm
    pooling: list[str] = field(default_factory=list)  # after the last LayerNorm
    linear: list[str] = field(default_factory=list)  # MatMul with a weight initializer
    attention_matmul: list[str] = field(default_factory=list)  # Q·Kᵀ and P·V
    ffn_out: list[str] = field(default_factory=list)  # FFN down projections


def _graph_roles(model_path: Path) -> _GraphRoles:
    """Classify nodes by graph structure, not by exporter-specific names.

    Tensors computed from `attention_mask` alone are mask arithmetic; a node mixing one
    with token data applies the mask (the additive score mask, the pooling multiply).
    Embeddings are the ancestors of the first LayerNormalization, pooling the descendants
    of the last one. A MatMul with an initializer is a linear layer; one whose weight is
    wider in than out is an FFN down projection; a MatMul of two activations is attention.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    roles = _GraphRoles()
    mask_only = {contract.ONNX_ATTENTION_MASK}
    data = {i.name for i in graph.input if i.name != contract.ONNX_ATTENTION_MASK}
    producer = {out: node for node in graph.node for out in node.output}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    for node in graph.node:  # ONNX graphs are topologically sorted
        ins = [i for i in node.input if i]
        if node.op_type in ("Shape", "Size"):
            continue  # a shape carries no values: masks expanded to a shape stay mask-only
        has_mask = any(i in mask_only for i in ins)
        has_data = any(i in data for i in ins)
        if has_mask and not has_data:
            mask_only.update(node.output)
            roles.mask.append(node.name)
        elif has_data:
            data.update(node.output)
            if has_mask:
                roles.mask.append(node.name)
        if node.op_type == "Softmax":
            roles.softmax.append(node.name)
        elif node.op_type == "LayerNormalization":
            roles.layernorm.append(node.name)
        elif node.op_type == "MatMul" and len(ins) == 2:
            weight = inits.get(ins[1])
            if weight is None and ins[0] not in inits:
                roles.attention_matmul.append(node.name)
            elif weight is not None:
                roles.linear.append(node.name)
                if len(weight) == 2 and weight[0] > weight[1]:
                    roles.ffn_out.append(node.name)
    if norms:
        ancestors, stack = set(), list(norms[0].input)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in ancestors:
                ancestors.add(node.name)
                stack.extend(node.input)
        roles.embeddings = [n.name for n in graph.node if n.name in ancestors]
        roles.embeddings.append(norms[0].name)
        descendants = set(norms[-1].output)
        for node in graph.node:
            if any(i in descendants for i in node.input):
                descendants.update(node.output)
                roles.pooling.append(node.name)
    return roles


def exclusion_candidates(model_path: Path) -> list[Exclusion]:
    """The exclusion sets `search_exclusions` measures, from naive to conservative.

    Measured on MiniLM (see the module docstring and the conversion report): quantizing
    every op collapses the embeddings; keeping the attention mask and Softmax in float is
    not enough; quantizing MatMuls only is close to fp32. The FFN output projection's
    input (GELU output: nearly one-sided, long-tailed) is the most range-sensitive MatMul
    input — with symmetric int8 it alone costs ~0.01 cosine — hence `*_no_ffn_out`.
    """
    r = _graph_roles(model_path)
    matmul = ("MatMul",)
    return [
        Exclusion("none", "every quantizable op (naive static QDQ)"),
        Exclusion(
            "mask_softmax",
            "every op but attention-mask arithmetic and Softmax",
            tuple(dict.fromkeys(r.mask + r.softmax)),
        ),
        Exclusion("matmul_only", "MatMuls only (linear layers and attention scores)", (), matmul),
        Exclusion(
            "linear_only",
            "weight MatMuls only; attention-score MatMuls stay float",
            tuple(r.attention_matmul),
            matmul,
        ),
        Exclusion(
            "matmul_no_ffn_out",
            "MatMuls but the FFN output projections",
            tuple(r.ffn_out),
            matmul,
        ),
        Exclusion(
            "linear_no_ffn_out",
            "weight MatMuls but the FFN output projections",
            tuple(r.attention_matmul + r.ffn_out),
            matmul,
        ),
    ]


def count_qdq_nodes(model_path: Path) -> int:
    """Number of QuantizeLinear + DequantizeLinear nodes in a graph."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
