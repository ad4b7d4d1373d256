"""The CPU-host bootstrap (dspark_sglang/serving/cpu_host/bootstrap.py) in fresh interpreters.

Each test runs `python -c` with the repository's .pth processed through site.addsitedir (what
site-packages does at start-up), so it works before the package is installed too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dspark_sglang.serving import compat
from dspark_sglang.serving.cpu_host import bootstrap

ROOT = Path(__file__).resolve().parents[2]
PTH = ROOT / "dspark_sglang" / "serving" / "cpu_host" / "dspark_sglang_cpu_host.pth"
needs_cpu_host = pytest.mark.skipif(bootstrap.cuda_driver_usable(), reason="a CUDA driver is usable here")


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    shutil.copy(PTH, d / PTH.name)
    return d


def run_py(site_dir: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    code = f"import site; site.addsitedir({str(site_dir)!r})\n" + textwrap.dedent(body)
    full_env = {k: v for k, v in os.environ.items() if k not in ("DSPARK_CPU_HOST", "SGLANG_USE_CPU_ENGINE",
                                                                  bootstrap.INTEL_AMX_ENV)}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=300, cwd=str(ROOT))


def test_pth_is_one_line():
    assert len(PTH.read_text().strip().splitlines()) == 1   # site executes only lines starting with import


def test_startup_is_lazy(site_dir):
    r = run_py(site_dir, """
        import sys
        finders = [f for f in sys.meta_path if getattr(f, "dspark_cpu_host", False)]
        print(len(finders), "torch" in sys.modules, "dspark_sglang" in sys.modules, finders[0].active)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "False", "False", "None"]


def test_off_switch(site_dir):
    r = run_py(site_dir, """
        import sys
        print(sum(getattr(f, "dspark_cpu_host", False) for f in sys.meta_path))
    """, DSPARK_CPU_HOST="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0"]


@needs_cpu_host
def test_sgl_kernel_imports_with_our_ops(site_dir):
    r = run_py(site_dir, """
        import os, sgl_kernel, torch
        from dspark_sglang.serving.cpu_host import bootstrap, sgl_kernel_ops
        print(os.environ.get("SGLANG_USE_CPU_ENGINE"), bootstrap.is_active(),
              all(sgl_kernel_ops.is_ours(op) for op in sgl_kernel_ops.CPU_OPS))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["1", "True", "True"]


@needs_cpu_host
def test_without_bootstrap_sgl_kernel_fails(site_dir):
    r = run_py(site_dir, "import sgl_kernel\n", DSPARK_CPU_HOST="0")
    assert r.returncode != 0   # the CUDA-only wheel cannot load here: the bootstrap is what fixes it


@needs_cpu_host
@pytest.mark.parametrize("keep, expected", [("1", "True"), ("0", "False")])
def test_intel_amx_platform_flag(site_dir, keep, expected):
    r = run_py(site_dir, """
        from sglang.srt.runtime_context import get_platform
        print(get_platform().has_amx)
    """, **{bootstrap.INTEL_AMX_ENV: keep})
    assert r.returncode == 0, r.stderr
    # on every CPU host, AMX tiles or not: SGLang's own check also needs sgl_kernel.convert_weight_packed,
    # which the bootstrap does not register, so without the flag SGLang picks torch_native
    assert r.stdout.split()[-1] == expected


def test_compat_hooks_present():
    pytest.importorskip("sglang")
    compat.require_cpu_host_hooks()   # raises naming anything missing


def test_compat_names_unsupported_version(monkeypatch):
    monkeypatch.setattr(compat, "installed_sglang_version", lambda: "0.4.0")
    with pytest.raises(RuntimeError, match=r"supports sglang 0\.5\.23; found sglang 0\.4\.0.*DSPARK_CPU_HOST=0"):
        compat.check_sglang_version()


def test_compat_names_missing_attrs():
    import types
    with pytest.raises(RuntimeError, match="fake_mod lacks _load_architecture_specific_ops"):
        compat.require_attrs(types.ModuleType("fake_mod"), ["_load_architecture_specific_ops"])
