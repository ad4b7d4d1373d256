"""SGLang integration. The only subpackage that imports sglang, and only inside functions or
submodules: the CPU-host bootstrap imports `dspark_sglang.serving.compat` while sglang itself is
being imported, so this file must not import sglang (or anything that does)."""
