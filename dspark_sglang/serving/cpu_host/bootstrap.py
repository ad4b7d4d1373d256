"""Let stock SGLang serve on a host without a usable CUDA driver, from interpreter start.

The `dspark_sglang_cpu_host.pth` file that the package build installs into site-packages loads this
file by path (without importing `dspark_sglang`, torch or sglang) and calls `install()`, in every
Python process: the launcher and the scheduler/detokenizer processes SGLang spawns. `install()` only
puts a meta-path finder in front of `sys.meta_path`; nothing else happens until a process imports
`sglang` or `sgl_kernel`. At that point the finder decides once whether this is a CPU host:

* ``DSPARK_CPU_HOST=0`` -> never (the finder stays inert); ``DSPARK_CPU_HOST=1`` -> always;
* unset / ``auto`` -> when no CUDA driver with a visible device is usable (libcuda.so.1 cannot be
  loaded, NVML reports no device, or CUDA_VISIBLE_DEVICES hides them all). Where CUDA works the finder
  does nothing.

On a CPU host it:

1. sets ``SGLANG_USE_CPU_ENGINE=1`` unless the caller set it (SGLang's `is_cpu()` needs it);
2. wraps `sgl_kernel.load_utils` so that `import sgl_kernel` skips the CUDA-only ``common_ops`` .so
   and instead loads `dspark_sglang._C`, whose csrc/cpu/sgl_kernel/*.cpp register the
   ``torch.ops.sgl_kernel.*_cpu`` ops the CPU engine calls (see `sgl_kernel_ops.py`);
3. wraps `sglang.srt.runtime_context` to declare ``has_amx=True``, unless
   ``DSPARK_CPU_HOST_INTEL_AMX=0``. That flag only decides whether SGLang keeps the `intel_amx`
   attention backend (served by our decode/extend attention ops) or falls back to `torch_native`,
   which cannot run speculative TARGET_VERIFY. SGLang's own answer is False on every CPU host, AMX
   tiles or not: `cpu_has_amx_support()` also asks for the `sgl_kernel.convert_weight_packed` op,
   which we do not register. AMX matmul paths therefore stay off: they test `cpu_has_amx_support()`
   directly, which this does not change;
4. wraps `sglang.srt.layers.quantization.unquant` and `sglang.srt.layers.logits_processor` so that the
   unquantized linear layers and the lm_head run `dspark.packed_linear` over packed weights where this CPU
   has a vector face (AVX-512 BF16, AVX-512F or AVX2 + FMA), unless
   ``DSPARK_CPU_HOST_PACKED_LINEAR=0`` (`packed_linear.py` says what is patched and why);
5. wraps `sglang.srt.layers.layernorm`, `.activation` and `.rotary_embedding.base` so that RMSNorm,
   SiluAndMul and RotaryEmbedding run one of our `sgl_kernel` CPU ops each instead of a chain of eager
   ops, unless ``DSPARK_CPU_HOST_FUSED_LAYERS=0`` (`fused_layers.py`).

This file must stay importable without its package: standard library only at module level.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

MODE_ENV = "DSPARK_CPU_HOST"
INTEL_AMX_ENV = "DSPARK_CPU_HOST_INTEL_AMX"
PACKED_LINEAR_ENV = "DSPARK_CPU_HOST_PACKED_LINEAR"
FUSED_LAYERS_ENV = "DSPARK_CPU_HOST_FUSED_LAYERS"
MODULE_NAME = "_dspark_sglang_cpu_host_bootstrap"  # name the .pth registers this file under

_TRIGGERS = frozenset({"sglang", "sgl_kernel"})
_UNQUANT = "sglang.srt.layers.quantization.unquant"
_LOGITS = "sglang.srt.layers.logits_processor"
_LAYERNORM = "sglang.srt.layers.layernorm"
_ACTIVATION = "sglang.srt.layers.activation"
_ROTARY = "sglang.srt.layers.rotary_embedding.base"
_WRAPPED = frozenset({"sgl_kernel.load_utils", "sglang.srt.runtime_context", _UNQUANT, _LOGITS, _LAYERNORM,
                      _ACTIVATION, _ROTARY})


def cuda_driver_usable() -> bool:
    """True when a CUDA driver is loadable and NVML sees at least one device.

    Uses NVML rather than cuInit so that the answer creates no CUDA context (fork stays safe).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    count = ctypes.c_uint(0)
    try:
        if nvml.nvmlInit_v2() != 0:
            return False
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        nvml.nvmlShutdown()
    except AttributeError:
        return False
    return ok and count.value > 0


def cpu_host_wanted() -> bool:
    """Whether this process should run SGLang through the CPU-host path (reads DSPARK_CPU_HOST)."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower()
    if mode in ("0", "off", "false"):
        return False
    if mode in ("1", "on", "true"):
        return True
    if mode != "auto":
        raise RuntimeError(f"{MODE_ENV} must be 0, 1 or auto; got {mode!r}")
    return not cuda_driver_usable()


def _load_cpu_ops() -> types.ModuleType:
    """Replacement for sgl_kernel.load_utils._load_architecture_specific_ops on a CPU host."""
    from dspark_sglang.serving.cpu_host import sgl_kernel_ops

    sgl_kernel_ops.load()
    stub = types.ModuleType("common_ops")
    stub.__doc__ = "CPU host: sgl_kernel CUDA ops not loaded; *_cpu ops come from dspark_sglang._C"
    return stub


def _patch_load_utils(module: types.ModuleType) -> None:
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("_load_architecture_specific_ops", "_preload_cuda_library"))
    module._load_architecture_specific_ops = _load_cpu_ops
    module._preload_cuda_library = lambda: None


def _patch_runtime_context(module: types.ModuleType) -> None:
    if os.environ.get(INTEL_AMX_ENV, "1") == "0":
        return
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("override_platform",))
    # not only on CPUs without AMX tiles: SGLang's check also needs an op we do not register, so an AMX
    # host (Sapphire Rapids and later) would otherwise fall back to torch_native as well
    module.override_platform(has_amx=True).install()


def _switch(env: str) -> bool:
    """An on/off environment switch, on by default; raises naming the variable for any other value."""
    mode = os.environ.get(env, "1").strip().lower()
    if mode not in ("0", "1", "off", "on", "false", "true"):
        raise RuntimeError(f"{env} must be 0 or 1; got {mode!r}")
    return mode in ("1", "on", "true")


def packed_linear_wanted() -> bool:
    """Whether the linear layers and lm_head go through packed_linear (reads DSPARK_CPU_HOST_PACKED_LINEAR)."""
    return _switch(PACKED_LINEAR_ENV)


def fused_layers_wanted() -> bool:
    """Whether RMSNorm / SiluAndMul / RotaryEmbedding run our fused CPU ops (reads DSPARK_CPU_HOST_FUSED_LAYERS)."""
    return _switch(FUSED_LAYERS_ENV)


def _switched_patch(wanted, helper_module: str, name: str):
    """A patch that, when `wanted()` at import time, calls dspark_sglang.serving.cpu_host.<helper_module>.<name>."""
    def patch(module: types.ModuleType) -> None:
        if wanted():
            import importlib

            getattr(importlib.import_module(f"dspark_sglang.serving.cpu_host.{helper_module}"), name)(module)
    return patch


_PATCHES = {
    "sgl_kernel.load_utils": _patch_load_utils,
    "sglang.srt.runtime_context": _patch_runtime_context,
    _UNQUANT: _switched_patch(packed_linear_wanted, "packed_linear", "patch_unquant"),
    _LOGITS: _switched_patch(packed_linear_wanted, "packed_linear", "patch_logits_processor"),
    _LAYERNORM: _switched_patch(fused_layers_wanted, "fused_layers", "patch_rmsnorm"),
    _ACTIVATION: _switched_patch(fused_layers_wanted, "fused_layers", "patch_silu_and_mul"),
    _ROTARY: _switched_patch(fused_layers_wanted, "fused_layers", "patch_rotary"),
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it produced."""

    def __init__(self, real: importlib.abc.Loader, patch) -> None:
        self._real = real
        self._patch = patch

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module) -> None:
        self._real.exec_module(module)
        self._patch(module)


class CpuHostFinder(importlib.abc.MetaPathFinder):
    """Inert until `sglang` or `sgl_kernel` is imported; then decides once and patches on CPU hosts."""

    dspark_cpu_host = True  # marker: install() puts at most one finder on sys.meta_path

    def __init__(self) -> None:
        self.active: bool | None = None  # None until decided

    def _decide(self) -> bool:
        if self.active is None:
            self.active = cpu_host_wanted()
            if self.active:
                from dspark_sglang.serving import compat

                compat.check_sglang_version()
                os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
        return self.active

    def find_spec(self, fullname, path, target=None):
        if fullname in _TRIGGERS:
            self._decide()
            return None  # the normal finders import the package itself
        if fullname not in _WRAPPED or not self._decide():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, _PATCHES[fullname])
        return spec


def installed_finder() -> CpuHostFinder | None:
    return next((f for f in sys.meta_path if getattr(f, "dspark_cpu_host", False)), None)


def install() -> None:
    """Put the finder first on sys.meta_path (idempotent; does nothing when DSPARK_CPU_HOST=0)."""
    if os.environ.get(MODE_ENV, "auto").strip().lower() in ("0", "off", "false"):
        return
    if installed_finder() is None:
        sys.meta_path.insert(0, CpuHostFinder())


def is_active() -> bool:
    """True once the finder has decided this process is a CPU host."""
    finder = installed_finder()
    return bool(finder is not None and finder.active)
