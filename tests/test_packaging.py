"""A plain `pip install` of the wheel runs every command: each import of the wheel's modules is a core dependency, or
belongs to an extra that the importing module's error message names (`pip install 'dali-hf[eval]'`), and
`dali-hf evaluate` without that extra says so before the model loads. The top-level folders that pyproject.toml maps
into the package (modeling/ as `dali_hf.modeling`, ...) are found by static checkers through the links in dali_hf/,
and the wheel holds each of their files once, under its installed name."""

import ast
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import soundfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dali_hf.testing import pairs_dataset, random_clip, saved_captioner

ROOT = Path(__file__).resolve().parents[1]
DALI_HF = str(Path(sys.executable).with_name("dali-hf"))


# {installed package: its top-level folder}, as pyproject.toml maps them for `pip install` and `pip install -e`
MAPPED = {package: folder for package, folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
          ["setuptools"]["package-dir"].items() if package != "dali_hf"}


def test_the_mapped_folders_resolve_statically_to_the_files_python_imports():
    """A static checker or an editor (pyright, "go to definition") does not run the editable install's import hook:
    it looks for `dali_hf.modeling` as the folder dali_hf/modeling. That folder is a link to modeling/, so it is
    the very folder Python imports, subpackages (`dali_hf.trainers.objectives`) included."""
    assert MAPPED == {"dali_hf.modeling": "modeling", "dali_hf.trainers": "trainers",
                      "dali_hf.model_cards": "model_cards"}
    for package, folder in MAPPED.items():
        link = ROOT / "dali_hf" / package.split(".", 1)[1]
        assert link.is_symlink() and os.readlink(link) == f"../{folder}", link
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            static = link / init.parent.relative_to(ROOT / folder) / "__init__.py"  # what the checker opens
            name = ".".join([package, *init.parent.relative_to(ROOT / folder).parts])
            imported = Path(importlib.util.find_spec(name).origin)
            assert static.is_file() and static.samefile(init) and imported.samefile(init), name


def _type_checking_imports(init: Path) -> dict[str, str]:
    """{name: module, relative as written} imported under `if TYPE_CHECKING:` in `init`."""
    found = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                found |= {alias.name: "." * statement.level + (statement.module or "") for alias in statement.names}
    return found


@pytest.mark.parametrize("package", ["dali_hf", "dali_hf.modeling"])
def test_the_lazy_public_names_resolve_statically(package):
    """`dali_hf` and `dali_hf.modeling` import their public names on first use (a module `__getattr__`), which a
    static checker reads as `Any`: "go to definition" of `from dali_hf import LlavaAudioProcessor` finds nothing.
    Each lazy name is also imported under `if TYPE_CHECKING:` from the module `__getattr__` loads it from."""
    module = importlib.import_module(package)
    lazy = module._PUBLIC if package == "dali_hf" else module._MODULE_OF
    assert _type_checking_imports(Path(module.__file__)) == lazy
    assert sorted(module.__all__) == sorted(lazy)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from this checkout, offline (this environment's setuptools)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return next(out.glob("dali_hf-*.whl"))


def declared(wheel: Path) -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, {extra: distributions}) from the wheel's METADATA, an extra that names another
    (`dali-hf[eval]`) holding that one's too."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    extras = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")]
    requirements = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]
    core = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    by_extra = {extra: {r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})}
                for extra in extras}
    resolved = {}
    for extra, members in by_extra.items():
        names = set()
        for requirement in members:
            if canonicalize_name(requirement.name) == "dali-hf":
                names |= {canonicalize_name(r.name) for e in requirement.extras for r in by_extra[e]}
            else:
                names.add(canonicalize_name(requirement.name))
        resolved[extra] = names
    return core, resolved


def imports(wheel: Path) -> dict[str, dict[str, str]]:
    """{module file in the wheel: {top-level module imported anywhere in it (module level or inside functions):
    its source}}, leaving out the standard library and the package itself."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.endswith(".py"):
                continue
            source = archive.read(name).decode()
            modules = set()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
            modules -= set(sys.stdlib_module_names) | {"dali_hf", "__future__"}
            found[name] = {module: source for module in modules}
    return found


@pytest.mark.slow  # builds the wheel
def test_every_import_of_the_wheel_is_declared_or_its_extra_is_named(wheel):
    core, extras = declared(wheel)
    assert extras.get("eval") == {"pycocoevalcap"}
    assert {"deepspeed", "trl", "pycocoevalcap", "pytest"} <= extras["dev"]
    distributions = importlib.metadata.packages_distributions()
    problems, optional = [], set()
    for module_file, modules in imports(wheel).items():
        for module, source in modules.items():
            names = {canonicalize_name(d) for d in distributions.get(module, [])}
            if not names:
                problems.append(f"{module_file} imports {module}, which no installed distribution provides")
            elif not names & core:
                holding = sorted(extra for extra, members in extras.items() if names & members)
                if not any(f"pip install 'dali-hf[{extra}]'" in source for extra in holding):
                    problems.append(f"{module_file} imports {module} ({', '.join(sorted(names))}), which is not a "
                                    f"core dependency, and names none of its extras {holding} in an install hint")
                optional.add(module)
    assert not problems, "\n".join(problems)
    assert optional == {"pycocoevalcap"}  # the one optional import, in dali_hf/metrics.py


@pytest.mark.slow  # builds the wheel
def test_the_wheel_declares_its_license_as_an_spdx_expression(wheel):
    """PEP 639's `License-Expression` (setuptools deprecates the `license = {text = ...}` table, and stops building
    projects that keep it from 2027)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    assert "License-Expression: Apache-2.0" in lines
    assert not any(line.startswith("License:") for line in lines)


@pytest.mark.slow  # builds the wheel
def test_the_wheel_holds_each_mapped_file_once_under_its_installed_name(wheel):
    """The links in dali_hf/ are for tools in a checkout: the wheel takes the mapped folders' files from the
    folders themselves, once each."""
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.endswith(".py")]
    assert len(names) == len(set(names))
    for package, folder in MAPPED.items():
        installed = package.replace(".", "/")
        expected = {f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
                    for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts}
        assert {name for name in names if name.startswith(installed + "/")} == expected, package


@pytest.mark.slow  # the dali-hf command in a fresh process
def test_evaluate_without_the_eval_extra_names_it_before_the_model_loads(llava_parts, tmp_path):
    """pycocoevalcap hidden behind an empty package of that name, as after a plain `pip install dali-hf`: one line
    naming the extra, no traceback, and nothing captioned (before, every clip was captioned, then the import
    failed)."""
    model = saved_captioner(llava_parts, "whisper", tmp_path / "model")
    hidden = tmp_path / "without-eval-extra"
    (hidden / "pycocoevalcap").mkdir(parents=True)
    (hidden / "pycocoevalcap" / "__init__.py").write_text("")
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "clip.wav", random_clip(0), 16000)
    (tmp_path / "clotho.csv").write_text("file_name,caption_1\nclip.wav,a dog barks\n")
    env = {**os.environ, "PYTHONPATH": str(hidden), "HF_HUB_OFFLINE": "1"}
    # metrics that need no CoreNLP, as a user would try (the default set is checked in test_scoring_tools)
    result = subprocess.run([DALI_HF, "evaluate", "--model", str(model), "--data", str(tmp_path / "clotho.csv"),
                             "--audio-dir", str(tmp_path / "audio"), "--output-dir", str(tmp_path / "out"),
                             "--metrics", "bleu_4", "cider_d"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "pip install 'dali-hf[eval]'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the dali-hf command in a fresh process
def test_pseudo_caption_command_loads_the_model_as_an_installed_package(llava_parts, tmp_path):
    """`dali-hf pseudo-caption` registers the model classes as the other commands do; without that, the command
    asked for trust_remote_code and ended in a traceback."""
    model = saved_captioner(llava_parts, "whisper", tmp_path / "model")
    pairs_dataset(3, seed=1).save_to_disk(tmp_path / "pairs")
    result = subprocess.run([DALI_HF, "pseudo-caption", "--model", str(model), "--data", str(tmp_path / "pairs"),
                             "--output-dir", str(tmp_path / "pseudo"), "--max-new-tokens", "3"], capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 pseudo-captions in" in result.stdout
