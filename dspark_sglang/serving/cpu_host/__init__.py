"""Run stock SGLang on hosts without a usable CUDA driver (see bootstrap.py for how and when).

The .pth hook loads bootstrap.py by path under `bootstrap.MODULE_NAME`; alias that module here so that
`dspark_sglang.serving.cpu_host.bootstrap` is the same object (one finder, one state).
"""
import sys as _sys

_boot = _sys.modules.get("_dspark_sglang_cpu_host_bootstrap")
if _boot is not None:
    _sys.modules.setdefault(__name__ + ".bootstrap", _boot)
del _boot
