"""python -m grouppose.collect_env: package versions for bug reports."""

from importlib import metadata

import pytest

from grouppose import collect_env


def _rows(monkeypatch, packages) -> dict:
    monkeypatch.setattr(collect_env, "OPTIONAL_PACKAGES", tuple(packages))
    return dict(collect_env.collect_env_info())


@pytest.mark.parametrize("module_name", ["pycocotools", "xtcocotools"])
def test_modules_without___version___report_their_pip_version(monkeypatch, module_name):
    pytest.importorskip(module_name)
    assert _rows(monkeypatch, [module_name])[module_name] == metadata.version(module_name)


def test_distribution_named_when_it_is_not_the_import_name(monkeypatch):
    pytest.importorskip("PIL")
    [distribution] = metadata.packages_distributions()["PIL"]
    reported = _rows(monkeypatch, ["PIL"])["PIL"]
    assert reported.startswith(f"{metadata.version(distribution)} ({distribution})")


def test_modules_without_metadata_and_failing_imports(monkeypatch, tmp_path):
    (tmp_path / "gp_env_versioned.py").write_text("__version__ = '1.2.3'\n")
    (tmp_path / "gp_env_unversioned.py").write_text("")
    (tmp_path / "gp_env_broken.py").write_text("raise RuntimeError('no backend')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = _rows(monkeypatch, [
        "gp_env_versioned", "gp_env_unversioned", "gp_env_broken", "gp_env_missing",
    ])
    assert rows["gp_env_versioned"] == "1.2.3"
    assert rows["gp_env_unversioned"] == "unknown version"
    assert rows["gp_env_broken"] == "not importable (RuntimeError: no backend)"
    assert rows["gp_env_missing"].startswith("not importable (ModuleNotFoundError")
