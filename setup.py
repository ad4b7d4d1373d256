"""Build dspark-sglang and its native extension `dspark_sglang._C`.

The CPU kernels are always built. The CUDA kernels are added when nvcc and a CUDA build of torch are
present; `DSPARK_BUILD_CUDA=1` forces them (and fails if impossible), `DSPARK_BUILD_CUDA=0` skips them.
`TORCH_CUDA_ARCH_LIST` defaults to Hopper (`9.0`). Build with `pip install --no-build-isolation -e .`
so that the torch already installed is the one compiled against.
"""
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - message for people who forgot the install order
    sys.exit("dspark-sglang: torch must be installed before building (pip install -r requirements.txt, "
             "then pip install --no-build-isolation -e .)")

ROOT = os.path.dirname(os.path.abspath(__file__))

# The CPU-host bootstrap (dspark_sglang/serving/cpu_host/bootstrap.py) must run at interpreter start in
# every process, so a .pth file goes into site-packages itself, for wheels and editable installs alike.
PTH_NAME = "dspark_sglang_cpu_host.pth"
PTH_SOURCE = os.path.join(ROOT, "dspark_sglang", "serving", "cpu_host", PTH_NAME)


class BuildPyWithPth(build_py):
    """build_py that also puts the CPU-host .pth at the top of build_lib (wheel root = site-packages)."""

    def run(self):
        super().run()
        self.copy_file(PTH_SOURCE, os.path.join(self.build_lib, PTH_NAME), preserve_mode=False)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy: writes its __editable__ hook, then the CPU-host .pth."""

    def __init__(self, inner):
        self._inner = inner

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self._inner(wheel, files, mapping)
        with open(PTH_SOURCE, "rb") as f:
            wheel.writestr(PTH_NAME, f.read())


class EditableWheelWithPth(editable_wheel):
    """PEP 660 editable wheels carry only setuptools' own hook; add the CPU-host .pth beside it."""

    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWithPth(super()._select_strategy(name, tag, build_lib))


def _want_cuda() -> bool:
    flag = os.environ.get("DSPARK_BUILD_CUDA", "auto").lower()
    if flag not in ("auto", "0", "1"):
        sys.exit(f"DSPARK_BUILD_CUDA must be 0, 1 or unset; got {flag!r}")
    if flag == "0":
        return False
    # torch guesses CUDA_HOME from `which nvcc`; a wrapper script in /usr/local/bin makes that guess
    # /usr/local, which has no CUDA headers. Prefer an explicit CUDA_HOME, then /usr/local/cuda.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    home = cpp_extension.CUDA_HOME
    has_headers = home is not None and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))
    possible = has_headers and torch.version.cuda is not None
    if flag == "1" and not possible:
        sys.exit(f"DSPARK_BUILD_CUDA=1 but no CUDA toolkit with headers (CUDA_HOME={home!r}) or torch is not a "
                 f"CUDA build (torch.version.cuda={torch.version.cuda!r}); set CUDA_HOME to the toolkit")
    return possible


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _torch_libstdcxx() -> list[str]:
    """The shared libstdc++ that torch loaded into this process, as a link input (Linux; else nothing).

    torch's libraries use that shared libstdc++. A second, static copy inside _C (a compiler whose own
    lib folder has only libstdc++.a did this on a GPU host, -lstdc++ or not) has its own locale facets,
    and the first number written into an error message then crashes the process. Naming the shared
    object before the driver's own libraries makes the linker take every libstdc++ symbol from it."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libstdc++.so"):
                    return [path]
    except OSError:
        pass
    return []


LINK_SHARED_LIBSTDCXX = _torch_libstdcxx()


def _extension():
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/**/*.cpp")
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "dspark_sglang._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"] + LINK_SHARED_LIBSTDCXX)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "dspark_sglang._C", sources + _sources("csrc/cuda/**/*.cu"),
        define_macros=[("DSPARK_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx + ["-DDSPARK_WITH_CUDA=1"], "nvcc": nvcc + ["-DDSPARK_WITH_CUDA=1"]},
        extra_link_args=["-fopenmp"] + LINK_SHARED_LIBSTDCXX)


class BuildExtChecked(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's ninja build_ext, then a check that _C links libstdc++ dynamically (see LINK_SHARED_LIBSTDCXX)."""

    def build_extensions(self):
        super().build_extensions()
        for ext in self.extensions:
            _check_shared_libstdcxx(self.get_ext_fullpath(ext.name))


def _check_shared_libstdcxx(path: str) -> None:
    try:
        dynamic = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return                                   # no binutils readelf: nothing to check with
    if "libstdc++.so" not in dynamic:
        sys.exit(f"dspark-sglang: {path} does not load the shared libstdc++ (the compiler linked a static copy: "
                 f"CXX={os.environ.get('CXX', 'c++')}, link inputs {LINK_SHARED_LIBSTDCXX}). torch uses the shared one, "
                 "and two copies crash on the first error message. Fix: build with the compiler torch was built "
                 "for (e.g. CXX=/usr/bin/g++), one that links libstdc++ dynamically.")


setup(
    name="dspark-sglang",
    version="0.1.0",
    description="DSpark confidence-scheduled speculative decoding for SGLang",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dspark_sglang", "dspark_sglang.*"]),
    include_package_data=True,
    package_data={"dspark_sglang": ["assets/**/*"]},
    install_requires=[
        "sglang==0.5.23",
        "torch==2.14.1",
        "transformers",
        "safetensors",
        "numpy",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "scipy"]},
    ext_modules=[_extension()],
    # SGLang loads this in the launcher and every scheduler process (`sglang.srt.plugins` group).
    entry_points={"sglang.srt.plugins": ["dspark = dspark_sglang.serving.plugin:register"]},
    cmdclass={
        "build_ext": BuildExtChecked,
        "build_py": BuildPyWithPth,
        "editable_wheel": EditableWheelWithPth,
    },
    zip_safe=False,
)
