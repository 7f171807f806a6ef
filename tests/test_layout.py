"""The package layout is the architecture: each subpackage is a layer, and a module imports only from its own
layer and the layers below it (docs/design.md §8); no module reaches into another's private names."""

import ast
from pathlib import Path

import recurlm

ROOT = Path(recurlm.__file__).parent
# Bottom to top. A module may import from its own entry and any entry listed before it.
LAYERS = [
    ("errors", "machine"),
    ("config",),
    ("tasks",),
    ("text",),
    ("network",),
    ("inference",),
    ("checkpoint",),
    ("evaluation", "importers", "export"),
    ("training",),
    ("analysis",),
    ("serve",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in ("presets", "__init__") or parts == ("export", "modeling_recurlm"):
            continue  # the package's front door may re-export anything; the exported model file imports no recurlm
        yield parts[0], path, ast.parse(path.read_text())


def imported(tree) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every `recurlm.*` import."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recurlm."):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("recurlm.")]
    return out


def test_every_module_is_in_a_layer():
    assert {layer for layer, _, _ in modules()} <= set(RANK)


def test_no_module_imports_a_higher_layer():
    bad = []
    for layer, path, tree in modules():
        for module, _, line in imported(tree):
            target = module.split(".")[1]
            if RANK[target] > RANK[layer] or (RANK[target] == RANK[layer] and target != layer):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_uses_another_modules_private_names():
    bad = []
    for _, path, tree in modules():
        for module, names, line in imported(tree):
            bad += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and not ast.unparse(node.value).startswith(("torch", "sys", "os"))
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {ast.unparse(node)}")
    assert not bad, "\n".join(bad)
