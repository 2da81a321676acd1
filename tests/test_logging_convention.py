"""One logging convention in the package, transformers' own (what modeling/ uses as remote code): each module that
logs has `logger = logging.get_logger(__name__)` with `from transformers.utils import logging`; no stdlib `logging`
import, no `getLogger`. The files are read, not imported."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("dali_hf", "trainers", "modeling", "model_cards")


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT).as_posix()
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name == "logging" for alias in node.names):
            offences.append(f"{where}:{node.lineno}: import logging (the standard library's)")
        elif isinstance(node, ast.ImportFrom) and node.module == "logging":
            offences.append(f"{where}:{node.lineno}: from logging import ...")
        elif isinstance(node, ast.ImportFrom) and any(alias.name == "logging" for alias in node.names) \
                and node.module not in ("transformers", "transformers.utils"):
            offences.append(f"{where}:{node.lineno}: logging from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr == "getLogger" \
                or isinstance(node, ast.Name) and node.id == "getLogger":
            offences.append(f"{where}:{node.lineno}: getLogger")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "logger" for t in node.targets) \
                and ast.unparse(node.value) != "logging.get_logger(__name__)":
            offences.append(f"{where}:{node.lineno}: logger = {ast.unparse(node.value)}")
    return offences


def test_every_module_logs_through_transformers_get_logger():
    files = sorted(path for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py"))
    assert len(files) > 40  # the walk sees the package
    offences = [offence for path in files for offence in _offences(path)]
    assert not offences, "use `from transformers.utils import logging` and `logging.get_logger(__name__)`:\n" + \
        "\n".join(offences)
    loggers = [path for path in files if "logger = logging.get_logger(__name__)" in path.read_text(encoding="utf-8")]
    assert len(loggers) >= 9  # dali_hf's, trainers' and modeling's modules that log
