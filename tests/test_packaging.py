"""The built wheel is complete: installed away from the checkout, it finds and builds its C++ kernels.

The wheel is built from a copy of the project, installed without dependencies into a fresh
venv whose only view of the current environment is a ``.pth`` file listing this interpreter's
site-packages folders (so torch and the rest import from there). ``site`` processes ``.pth``
files only in the site folders themselves, not in folders a ``.pth`` line adds, so the
editable install's finder in the current environment never runs there and ``adaptertx``
can only come from the wheel. The default build cache is shared: its folder names are hashes
of the sources and the build compiles a copy kept in the cache, so the installed package
reuses the kernels the checkout built (reading its own sources to compute the name).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import adaptertx
from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.kernels import _build

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS_MAJOR = 77  # pyproject.toml's [build-system] requires
# Not part of the project's source: environments, build outputs, run results, caches.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs", "results",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", ".cache")

_PROBE = """
import json, sys
import adaptertx
from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.kernels import _build
print(json.dumps({"file": adaptertx.__file__, "csrc": str(_build.CSRC), "version": adaptertx.__version__,
                  "finders": [f.__module__ for f in sys.meta_path]}))
"""


def _run(args, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project (the checkout itself gets no build/ or egg-info)."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip wheel is impossible here: pip or setuptools is not installed in this environment")
    setuptools = metadata.version("setuptools")
    if int(setuptools.split(".")[0]) < SETUPTOOLS_MAJOR:
        pytest.skip(f"pip wheel --no-build-isolation is impossible here: setuptools {setuptools} is older than the "
                    f"{SETUPTOOLS_MAJOR} that pyproject.toml's build-system requires")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (path,) = (tmp / "dist").glob("adaptertx-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv holding the wheel, seeing the current environment's packages but not the checkout."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False, symlinks=os.name != "nt")
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=root, env=env).stdout.strip()
    Path(purelib, "_outer_site.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    # pip comes from the outer environment through the .pth; --ignore-installed makes it install
    # beside the outer environment's adaptertx without ever uninstalling it.
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
          "--no-warn-script-location", str(wheel)], cwd=root, env=env)
    return env_dir, env


def test_wheel_ships_the_kernel_sources_and_the_license(wheel):
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    for op in _build.OPS:
        assert f"adaptertx/csrc/{op}.cpp" in names
    for shared in _build._SHARED_SOURCES:
        assert f"adaptertx/csrc/{shared}" in names
    dist_info = wheel.name.split("-py")[0] + ".dist-info"
    assert "Apache License" in archive.read(f"{dist_info}/licenses/LICENSE").decode()
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert f"\nVersion: {adaptertx.__version__}\n" in metadata


def test_installed_wheel_runs_native_kernels_outside_the_checkout(installed, monkeypatch, tmp_path):
    env_dir, env = installed
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # native: build and use the kernels even on a CPU without AVX-512 (where auto takes the reference).
    env = {**env, _build.ENV: "native"}
    probe = json.loads(_run([str(bindir / "python"), "-c", _PROBE], cwd=tmp_path, env=env).stdout)
    assert Path(probe["file"]).resolve().is_relative_to(env_dir.resolve()), probe["file"]
    assert not Path(probe["file"]).resolve().is_relative_to(REPO), probe["file"]
    assert Path(probe["csrc"]).resolve().is_relative_to(env_dir.resolve()), probe["csrc"]
    assert not any(m.startswith("__editable__") for m in probe["finders"]), probe["finders"]

    report = json.loads(_run([str(bindir / "adaptertx"), "env", "--json"], cwd=tmp_path, env=env).stdout)
    assert report["versions"]["adaptertx"] == probe["version"] == adaptertx.__version__
    version = _run([str(bindir / "adaptertx"), "--version"], cwd=tmp_path, env=env).stdout
    assert adaptertx.__version__ in version, version
    # The checkout's own build is the yardstick: where a kernel builds here, it must build there.
    monkeypatch.setenv(_build.ENV, "native")
    for op in _build.OPS:
        line = report["kernels on cpu"][op]
        assert "source not found" not in line, line
        if _build.native_available(op):
            assert line == f"native (adaptertx/csrc/{op}.cpp)", line


def test_build_compiles_a_copy_that_is_rewritten_only_when_it_changes(monkeypatch, tmp_path):
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "common.h").write_text("// shared\n")
    (src / "bias_gelu.cpp").write_text("// one\n")
    monkeypatch.setattr(_build, "CSRC", src)
    staged = _build._stage_sources("bias_gelu", tmp_path / "build")
    assert sorted(p.name for p in staged.iterdir()) == ["bias_gelu.cpp", "common.h"]
    stamp = (staged / "bias_gelu.cpp").stat().st_mtime_ns
    os.utime(staged / "bias_gelu.cpp", ns=(stamp - 10**9, stamp - 10**9))
    _build._stage_sources("bias_gelu", tmp_path / "build")
    assert (staged / "bias_gelu.cpp").stat().st_mtime_ns == stamp - 10**9
    (src / "bias_gelu.cpp").write_text("// two\n")
    _build._stage_sources("bias_gelu", tmp_path / "build")
    assert (staged / "bias_gelu.cpp").read_text() == "// two\n"


def test_bnb_int8_without_bitsandbytes_names_the_extra(monkeypatch):
    from adaptertx.modeling import load_base

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(AdaptertxError, match=r"^quant 'bnb-int8' needs bitsandbytes, which is not installed: "
                                             r"pip install 'adaptertx\[bnb\]'$"):
        load_base("an-org/an-encoder", "bnb-int8")


def test_report_plots_without_matplotlib_name_the_extra(monkeypatch):
    from adaptertx import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(AdaptertxError, match=r"^drawing the report's plots needs matplotlib, .*'adaptertx\[plots\]'$"):
        report._pyplot()


def test_an_installed_extra_that_fails_to_import_keeps_its_own_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError):
        import_optional("matplotlib.pyplot", "plots", "drawing the report's plots")
