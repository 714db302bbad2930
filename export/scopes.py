"""Which module of the detector a node of the exported graph belongs to.

torch.onnx's exporter records each node's module path in its metadata
(`pkg.torch.onnx.name_scopes`, e.g. ['', 'rpn_head', 'rpn_head.cls_logits', 'conv2d_15']).
--fp16 and --int8 choose their nodes by it, not by op type: by op type alone the anchor and
box arithmetic (Add, Mul, Gather) would be converted with the backbone.
"""

from __future__ import annotations

import ast

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def scope_path(node: onnx.NodeProto) -> list[str]:
    """The node's module path (qualified names, outermost first), [] when it has none."""
    scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    return ast.literal_eval(scopes) if scopes else []


def _inside(path: list[str], module: str) -> bool:
    return any(part == module or part.startswith(module + ".") for part in path)


def nodes_in(model: onnx.ModelProto, modules, except_in=()) -> list[str]:
    """Names of the nodes inside one of the top-level `modules` and inside none of the
    (qualified) modules `except_in`, e.g. nodes_in(m, ["rpn_head"], ["rpn_head.cls_logits"])."""
    names = []
    for node in model.graph.node:
        path = scope_path(node)
        if len(path) > 2 and path[1] in modules and not any(_inside(path, m) for m in except_in):
            names.append(node.name)
    return names
