"""Which SGLang this package supports, and probes for the SGLang hooks it relies on.

Only `dspark_sglang.serving` imports sglang. Every function here fails with a RuntimeError that names
what is missing, so that an unsupported SGLang stops at start-up rather than mid-request. The module
itself imports nothing heavy: the CPU-host bootstrap calls it while `sglang` is being imported.
"""
from __future__ import annotations

from importlib import metadata
from types import ModuleType
from typing import Iterable

SUPPORTED_SGLANG_VERSIONS = ("0.5.23",)

# Hooks the CPU-host bootstrap (serving/cpu_host) patches or calls, by module.
CPU_HOST_HOOKS = {
    "sgl_kernel.load_utils": ("_load_architecture_specific_ops", "_preload_cuda_library"),
    "sglang.srt.runtime_context": ("override_platform",),
    "sglang.srt.layers.attention.intel_amx_backend": ("IntelAMXAttnBackend",),
    "sglang.srt.layers.quantization.unquant": ("UnquantizedLinearMethod",),
    "sglang.srt.layers.logits_processor": ("LogitsProcessor", "should_apply_lm_head_quant_method"),
    "sglang.srt.layers.layernorm": ("RMSNorm",),
    "sglang.srt.layers.activation": ("SiluAndMul",),
    "sglang.srt.layers.rotary_embedding.base": ("RotaryEmbedding",),
}


def installed_sglang_version() -> str | None:
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def check_sglang_version() -> str:
    """Returns the installed SGLang version; raises RuntimeError when it is missing or unsupported."""
    version = installed_sglang_version()
    if version is None:
        raise RuntimeError("dspark_sglang.serving needs SGLang; install sglang==" + SUPPORTED_SGLANG_VERSIONS[-1])
    if version not in SUPPORTED_SGLANG_VERSIONS:
        raise RuntimeError(
            f"dspark_sglang supports sglang {', '.join(SUPPORTED_SGLANG_VERSIONS)}; found sglang {version}. "
            "Install a supported version, or set DSPARK_CPU_HOST=0 to turn the CPU-host bootstrap off.")
    return version


def require_attrs(module: ModuleType, names: Iterable[str]) -> None:
    """Raises RuntimeError naming every attribute of `module` the bootstrap needs and cannot find."""
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise RuntimeError(
            f"dspark_sglang CPU host: {module.__name__} lacks {', '.join(missing)} "
            f"(SGLang {installed_sglang_version()}; supported: {', '.join(SUPPORTED_SGLANG_VERSIONS)}). "
            "Set DSPARK_CPU_HOST=0 to turn the CPU-host bootstrap off.")


def _module_source(module_name: str) -> str | None:
    """Source text of a module, found without importing it or its parent packages."""
    import importlib.util
    import os

    top, *rest = module_name.split(".")
    spec = importlib.util.find_spec(top)   # a top-level name: nothing is executed
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), *rest)
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.exists(candidate):
            with open(candidate, encoding="utf-8") as f:
                return f.read()
    return None


def _top_level_names(source: str) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def probe_cpu_host_hooks() -> dict[str, list[str]]:
    """Returns {module: [missing names]} for the hooks the CPU-host path needs; empty when all exist.

    Reads the modules' source (no import: on a CPU host `sgl_kernel` cannot be imported before the
    bootstrap patches it), so it also works in a process where the bootstrap is off.
    """
    missing: dict[str, list[str]] = {}
    for module_name, attrs in CPU_HOST_HOOKS.items():
        source = _module_source(module_name)
        if source is None:
            missing[module_name] = ["<module not found>"]
            continue
        absent = [a for a in attrs if a not in _top_level_names(source)]
        if absent:
            missing[module_name] = absent
    return missing


def require_cpu_host_hooks() -> None:
    """Raises RuntimeError listing every missing hook of the CPU-host path."""
    check_sglang_version()
    missing = probe_cpu_host_hooks()
    if missing:
        what = "; ".join(f"{m}: {', '.join(a)}" for m, a in missing.items())
        raise RuntimeError(f"dspark_sglang CPU host: this SGLang lacks {what}")
