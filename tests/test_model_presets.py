"""Presets: shipped data files load, KV sizes follow from architecture fields, bad files are named."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from harness.errors import ScenarioError
from harness.model import known_presets, load_hardware, load_model

KIB, MIB = 1024, 1024**2


def test_required_presets_ship():
    assert {"h200", "h20", "h100", "b200"} <= set(known_presets("hardware"))
    assert {"kimi-1t-hybrid", "minimax-m2.5", "kimi-linear-48b", "qwen3-235b", "deepseek-v3"} <= set(
        known_presets("models")
    )


@pytest.mark.parametrize(
    ("name", "tflops", "fp8", "tbps", "gb"),
    [
        ("H200", 989, 1979, 4.8, 141),
        ("H20", 148, 296, 4.0, 96),
        ("H100", 989, 1979, 3.35, 80),
        ("B200", 2250, 4500, 8.0, 180),
    ],
)
def test_hardware_datasheet_figures(name, tflops, fp8, tbps, gb):
    hw = load_hardware(name.lower())  # names are case-insensitive
    assert (hw.name, hw.bf16_tflops, hw.fp8_tflops, hw.hbm_tbps, hw.hbm_gb) == (name, tflops, fp8, tbps, gb)
    assert hw.price_per_gpu_hour > 0


def test_minimax_gqa_kv_is_248_kib_per_token():
    m = load_model("minimax-m2.5")
    assert m.kv_bytes_per_token == 62 * 8 * 128 * 2 * 2 == 248 * KIB
    assert m.state_bytes_per_seq == 0


def test_deepseek_mla_kv_is_about_70_kb_per_token():
    m = load_model("deepseek-v3")
    assert m.kv_bytes_per_token == 61 * (512 + 64) * 2
    assert m.kv_bytes_per_token == pytest.approx(70e3, rel=0.02)


def test_hybrid_kv_matches_paper_decomposition():
    """Design brief: S_kv ≈ 172 MiB fixed recurrent state + ≈16.7 KiB per token."""
    m = load_model("kimi-1t-hybrid")
    assert m.kv_bytes_per_token / KIB == pytest.approx(16.7, rel=0.02)
    assert m.state_bytes_per_seq / MIB == pytest.approx(172, rel=0.05)
    assert m.attention.layers * 3 == m.linear_attention.layers  # KDA:MLA = 3:1


def test_user_toml_path_loads(tmp_path):
    src = load_model("minimax-m2.5")
    text = (
        'name = "tiny"\nparams_total = 1e9\nparams_active = 1e9\ncontext_length = 4096\n'
        'weight_bytes_per_param = 2\n[attention]\nkind = "gqa"\nlayers = 2\nheads = 4\nkv_heads = 2\n'
        "head_dim = 64\nkv_dtype_bytes = 2\n"
    )
    (tmp_path / "tiny.toml").write_text(text)
    m = load_model("tiny.toml", base=tmp_path)
    assert m.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2
    assert m.moe is None and src.moe is not None
    assert m.weight_bytes_read(4) == m.weight_bytes  # dense: every weight every step


def test_unknown_preset_lists_known_names():
    with pytest.raises(ScenarioError, match=r"unknown hardware preset 'A100'; known: b200, h100, h20, h200"):
        load_hardware("A100")
    with pytest.raises(
        ScenarioError, match=r"unknown model preset 'gpt-5'; known: .*kimi-1t-hybrid.*minimax-m2.5"
    ):
        load_model("gpt-5")


def test_bad_preset_fields_are_named(tmp_path):
    good = tmp_path / "h.toml"
    text = resources.files("harness").joinpath("presets/hardware/h20.toml").read_text(encoding="utf-8")
    good.write_text(text.replace("hbm_tbps = 4.0", "hbm_tbps = -4.0"))
    with pytest.raises(ScenarioError, match=r"h\.toml: hbm_tbps: must be > 0"):
        load_hardware(good)
    good.write_text(text.replace("hbm_gb = 96", "hbm_gib = 96"))
    with pytest.raises(ScenarioError, match=r"h\.toml: hbm_gib: unknown key \(known: name, bf16_tflops"):
        load_hardware(good)
    good.write_text(re.sub(r"gemm_efficiency = [0-9.]+", "gemm_efficiency = 1.5", text))
    with pytest.raises(
        ScenarioError, match=r"h\.toml: \[calibration\] gemm_efficiency: must be <= 1, got 1.5"
    ):
        load_hardware(good)
    with pytest.raises(ScenarioError, match="no such hardware preset file"):
        load_hardware(tmp_path / "missing.toml")
