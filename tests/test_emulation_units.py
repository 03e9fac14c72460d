"""Pure parts of the emulation: scaling, the [emulation] table, prompt tokens and block ids, request parsing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness.cli import main as cli
from harness.config.base import override
from harness.emulation import api
from harness.emulation.spec import EmulationSpec, byte_scale, emulated_delay_ms
from harness.emulation.tokens import block_ids, count_tokens
from harness.errors import ScenarioError
from harness.traces.prompts import PromptSynth


def test_byte_scale_follows_design_md():
    # 100 Gbps real, 800 Mbit/s emulated, 10x faster: 0.008 / 10.
    assert byte_scale(real_rate_gbps=100, emu_rate_mbit=800, speedup=10) == pytest.approx(8e-4)
    # A transfer keeps its proportion to compute: T_emu = B_emu / R_emu = (B_real / R_real) / s.
    b_real, r_real, r_emu, s = 906 * 2**20, 100e9 / 8, 800e6 / 8, 10
    b_emu = b_real * byte_scale(real_rate_gbps=100, emu_rate_mbit=800, speedup=s)
    assert b_emu / r_emu == pytest.approx(b_real / r_real / s)
    assert emulated_delay_ms(5.0, 10) == 0.5


def test_command_line_flags_override_the_emulation_table_and_are_named_when_bad():
    table = EmulationSpec(speedup=4, layers=16)
    spec = override(table, {"connections": 3, "speedup": None})  # None: the flag was not given
    assert (spec.speedup, spec.layers, spec.connections) == (4, 16, 3)
    with pytest.raises(ScenarioError, match=r"^--kv-rate-mbit: must be >= 0.001, got 0$"):
        override(table, {"kv_rate_mbit": 0})
    with pytest.raises(ScenarioError, match=r"^--connections: must be <= 64, got 1000$"):
        override(table, {"connections": 1000})


def test_prompts_from_shared_hash_ids_share_exactly_those_block_ids():
    synth = PromptSynth(block_tokens=512)
    a = synth.prompt([11, 12, 13], 1300, row=0)
    b = synth.prompt([11, 12, 99], 1300, row=1)
    assert count_tokens(a) == count_tokens(b) == 1300
    ids_a, ids_b = block_ids(a.split(), 512), block_ids(b.split(), 512)
    assert len(ids_a) == 3  # ceil(1300 / 512), the last block partial, like the trace's hash ids
    assert ids_a[:2] == ids_b[:2] and ids_a[2] != ids_b[2]
    # Chained: the same block text after a different prefix gets a different id.
    assert block_ids(["x", "y"], 1)[1] != block_ids(["z", "y"], 1)[1]


def test_parse_request_reads_fields_and_counts_tokens():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "a b"},
            {"role": "user", "content": [{"type": "text", "text": "c"}]},
        ],
        "max_completion_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 5,
    }
    req = api.parse_request(api.CHAT, body, models=("m",), context_tokens=100, block_tokens=2)
    assert (req.prompt_tokens, req.max_tokens, req.min_tokens, req.include_usage) == (3, 5, 5, True)
    assert len(req.block_ids) == 2
    ids = api.parse_request(
        api.COMPLETIONS,
        {"model": "m", "prompt": [5, 6, 7]},
        models=("m",),
        context_tokens=100,
        block_tokens=2,
    )
    assert ids.prompt_tokens == 3 and ids.max_tokens == api.DEFAULT_MAX_TOKENS
    with pytest.raises(api.ApiError) as err:
        api.parse_request(
            api.COMPLETIONS,
            {"model": "m", "prompt": ["a", "b"]},
            models=("m",),
            context_tokens=9,
            block_tokens=2,
        )
    assert err.value.status == 400 and err.value.param == "prompt"


def test_serve_cli_rejects_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["serve", str(tmp_path / "nope.toml"), "--no-netns"])
    assert missing.exit_code == 2 and "no such scenario file" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "kimi-1t-hybrid"\n[emulation]\nspeedup = -1\n')
    out = runner.invoke(cli, ["serve", str(bad), "--no-netns"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert out.output == f"error: {bad}: [emulation] speedup: must be >= 0.01, got -1\n"


def test_a_scenario_network_gets_the_delay_of_the_speedup_in_force():
    from harness.serving.linkevents import with_link_delay

    table = {
        "sites": ["local", "remote", "client"],
        "links": [
            {
                "between": ["remote", "local"],
                "rate_mbit": 800,
                "delay_ms": 0.5,
                "jitter_ms": 0.1,
                "reverse": {"delay_ms": 2},
            },
            {"between": ["client", "local"], "delay_ms": 3},
        ],
    }
    out = with_link_delay(table, 1.25)  # 5 ms real / speed-up 4
    inter, client = out["links"]
    assert (inter["delay_ms"], inter["reverse"]["delay_ms"], inter["rate_mbit"]) == (1.25, 1.25, 800)
    assert inter["jitter_ms"] == pytest.approx(0.25)  # scaled with the delay
    assert client["delay_ms"] == 3  # other links are the user's
    assert table["links"][0]["delay_ms"] == 0.5  # the scenario itself is untouched
