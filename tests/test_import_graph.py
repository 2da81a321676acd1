"""The package's architecture is its import graph: `modeling <- trainers <- dali_hf <- dali_hf.demo`, with
`model_cards` beside `modeling`, and modeling/ (what the Hub gets) needing only torch, transformers and numpy.

The graph is walked in a fresh interpreter (`python -c`) over the installed package's files: every import statement,
those inside functions included, with relative imports resolved."""

import json
import os
import subprocess
import sys

WALK = '''
import ast, importlib.util, json, os

def is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

edges = []
for package in ["dali_hf", "dali_hf.modeling", "dali_hf.trainers", "dali_hf.trainers.objectives",
                "dali_hf.model_cards", "dali_hf.demo"]:
    folder = os.path.dirname(importlib.util.find_spec(package).origin)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        module = package if name == "__init__.py" else package + "." + name[:-3]
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        in_functions = {id(node) for function in ast.walk(tree)
                        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \\
                    if node.level else node.module
                # `from package import submodule` imports the submodule
                targets = [stem + "." + alias.name if stem.startswith("dali_hf") and is_module(stem + "." + alias.name)
                           else stem for alias in node.names]
            else:
                continue
            edges += [[module, target, id(node) in in_functions] for target in targets]
print(json.dumps(edges))
'''

LAYERS = {"dali_hf.modeling": 0, "dali_hf.model_cards": 0, "dali_hf.trainers": 1, "dali_hf": 2, "dali_hf.demo": 3}
# modeling/ decodes media inside the functions that decode, with the backends transformers itself uses when they are
# installed; importing the model, config, processor or pipeline needs none of them
MODELING_MODULE_LEVEL = {"torch", "transformers", "numpy"}
MODELING_INSIDE_FUNCTIONS = MODELING_MODULE_LEVEL | {"torchaudio", "torchcodec", "soundfile", "PIL"}


def import_graph() -> list[tuple[str, str, bool]]:
    """(importing module, imported module, whether the import is inside a function) of the installed package."""
    result = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return [tuple(edge) for edge in json.loads(result.stdout)]


def part(module: str) -> str | None:
    """Which part of the package `module` belongs to (a key of LAYERS), or None outside dali_hf."""
    if not module.startswith("dali_hf"):
        return None
    two = ".".join(module.split(".")[:2])
    return two if two in LAYERS else "dali_hf"


def test_imports_flow_one_way():
    edges = import_graph()
    assert len({source for source, _, _ in edges}) > 40, "the walk found too few modules to be the package"
    against = [(source, target) for source, target, _ in edges
               if part(target) is not None and (LAYERS[part(target)] > LAYERS[part(source)]
                                                or {part(source), part(target)} == {"dali_hf.modeling",
                                                                                    "dali_hf.model_cards"})]
    assert not against, f"imports against modeling <- trainers <- dali_hf <- dali_hf.demo: {against}"


def test_modeling_files_need_only_torch_transformers_numpy():
    edges = import_graph()
    stdlib = set(sys.stdlib_module_names)
    outside = [(source, target, inside) for source, target, inside in edges
               if source.startswith("dali_hf.modeling") and not target.startswith("dali_hf.modeling")
               and target.split(".")[0] not in stdlib
               and target.split(".")[0] not in (MODELING_INSIDE_FUNCTIONS if inside else MODELING_MODULE_LEVEL)]
    assert not outside, f"modeling/ files importing outside torch, transformers, numpy and modeling/: {outside}"


def test_the_walk_resolves_relative_and_nested_imports():
    """What the rules above read: relative imports resolved to modules, imports inside functions marked."""
    edges = set(import_graph())
    assert ("dali_hf.trainers.stages", "dali_hf.model_cards", False) in edges  # from ..model_cards import ...
    assert ("dali_hf.convert", "dali_hf.trainers.alignment", False) in edges  # from .trainers.alignment import ...
    assert ("dali_hf.modeling.media", "torchcodec.decoders", True) in edges  # inside AudioSource._open_encoded
    assert ("dali_hf.demo.experiment", "dali_hf.recipe", True) in edges
