"""What the metrics need, checked without changing anything: the COCO caption toolkit (the `eval` extra), Java, and
Stanford CoreNLP for SPICE, whose install is one explicit step."""

import importlib
import os
import stat
import sys
from pathlib import Path

import pytest

from dali_hf import metrics
from dali_hf.evaluation import metrics_to_compute
from dali_hf.metrics import (
    ScoringToolsMissingError,
    SpiceUnavailableError,
    check_scoring_tools,
    install_corenlp,
    spice_available,
)

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


@pytest.fixture
def only_this_pycocoevalcap(monkeypatch):
    """A function making `root/pycocoevalcap` the one this process finds (first on sys.path, nothing of it imported
    yet); afterwards the installed one is back, and nothing imported from `root` is left in sys.modules."""
    imported = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "pycocoevalcap"}

    def use(root: Path) -> None:
        for name in [name for name in sys.modules if name.split(".")[0] == "pycocoevalcap"]:
            del sys.modules[name]
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()

    yield use
    for name in [name for name in sys.modules if name.split(".")[0] == "pycocoevalcap"]:
        del sys.modules[name]
    sys.modules.update(imported)
    importlib.invalidate_caches()


def spice_copy(root: Path) -> Path:
    """A copy of pycocoevalcap's SPICE folder layout under `root`: spice.py and lib/ with SPICE's own jars (as
    links), without CoreNLP."""
    import pycocoevalcap.spice.spice as installed

    source = Path(installed.__file__).parent
    (root / "pycocoevalcap" / "spice" / "lib").mkdir(parents=True)
    for name in ("__init__.py", "spice.py"):
        (root / "pycocoevalcap" / "spice" / name).write_bytes((source / name).read_bytes())
    for jar in (source / "lib").iterdir():
        (root / "pycocoevalcap" / "spice" / "lib" / jar.name).symlink_to(jar)
    return root / "pycocoevalcap" / "spice" / "lib"


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(path.relative_to(root)): (path.is_symlink(), os.lstat(path).st_mtime_ns, os.lstat(path).st_mode)
            for path in sorted(root.rglob("*"))}


def corenlp_folder(path: Path) -> Path:
    path.mkdir()
    for jar in CORENLP_JARS:
        (path / jar).write_bytes(b"")  # SPICE is not run here: the jars' presence is what is checked
    return path


def test_spice_check_on_a_read_only_copy_changes_nothing(tmp_path, monkeypatch, only_this_pycocoevalcap):
    lib = spice_copy(tmp_path / "site")
    monkeypatch.setenv("DALI_CORENLP_DIR", str(corenlp_folder(tmp_path / "corenlp")))
    only_this_pycocoevalcap(tmp_path / "site")
    for folder in (lib, lib.parent, lib.parent.parent):
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    before = snapshot(tmp_path / "site")
    try:
        assert metrics._spice_lib() == str(lib)  # the copy is the one looked at
        assert spice_available() is False  # CoreNLP found beside it, but not installed where SPICE reads it
        with pytest.raises(SpiceUnavailableError, match="install-corenlp FOLDER"):
            metrics_to_compute(["spice"])
        assert metrics_to_compute()[1]["spider"].endswith("`python -m dali_hf.metrics install-corenlp FOLDER`")
        assert snapshot(tmp_path / "site") == before
    finally:
        for folder in (lib, lib.parent, lib.parent.parent):
            folder.chmod(stat.S_IRWXU)


def test_install_corenlp_is_the_explicit_step_that_makes_spice_available(tmp_path, monkeypatch,
                                                                          only_this_pycocoevalcap):
    lib = spice_copy(tmp_path / "site")
    monkeypatch.delenv("DALI_CORENLP_DIR", raising=False)
    only_this_pycocoevalcap(tmp_path / "site")
    with pytest.raises(SpiceUnavailableError, match="pass it, or set DALI_CORENLP_DIR"):
        install_corenlp()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CORENLP_JARS[0]).write_bytes(b"")
    with pytest.raises(SpiceUnavailableError, match=f"{tmp_path / 'half'} does not hold {CORENLP_JARS[1]}"):
        install_corenlp(str(tmp_path / "half"))
    assert spice_available() is False and not (lib / CORENLP_JARS[0]).exists()

    corenlp = corenlp_folder(tmp_path / "corenlp")
    metrics.main(["install-corenlp", str(corenlp)])
    assert spice_available() is True
    assert {(lib / jar).resolve() for jar in CORENLP_JARS} == {corenlp / jar for jar in CORENLP_JARS}
    assert metrics_to_compute(["spider"]) == (["spider"], {})


def test_missing_toolkit_is_named_with_its_extra_before_any_work(tmp_path, only_this_pycocoevalcap):
    hidden = tmp_path / "without-eval-extra"
    (hidden / "pycocoevalcap").mkdir(parents=True)
    (hidden / "pycocoevalcap" / "__init__.py").write_text("")  # what a plain install finds: no toolkit
    only_this_pycocoevalcap(hidden)
    for check in (check_scoring_tools, lambda: metrics_to_compute(["bleu_4"]),
                  lambda: metrics.score(["a dog"], [["a dog barks"]], ["cider_d"])):
        with pytest.raises(ScoringToolsMissingError, match=r"install it with `pip install 'dali-hf\[eval\]'`"):
            check()
    assert metrics._spice_lib() is None and spice_available() is False
    with pytest.raises(ScoringToolsMissingError, match=r"pip install 'dali-hf\[eval\]'` first"):
        install_corenlp(str(tmp_path))


def test_missing_java_is_named_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(ScoringToolsMissingError, match="no `java` is on PATH: install a Java runtime"):
        check_scoring_tools()
