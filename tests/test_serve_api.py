"""The emulated endpoints over real HTTP (loopback sites): OpenAI shapes, PD legs, caching, errors, metrics."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from threaded_server import ServerThread

from harness.cli import main
from harness.emulation.clusters import EmulatedClusters
from harness.loadgen.fakeserver import FakeServer
from harness.records import read_meta

REPO = Path(__file__).resolve().parent.parent
CASE_STUDY = (REPO / "workloads" / "paper-case-study.toml").read_text()


def drop_tables(text: str, *names: str) -> str:
    """``text`` without the TOML tables ``[name]`` (and their ``[name.sub]`` / ``[[name.sub]]`` parts)."""
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\[\[?([A-Za-z0-9_.-]+)\]\]?", line)
        if header:
            skip = header.group(1).split(".")[0] in names
        if not skip:
            out.append(line)
    return "".join(out)


def _scenario(tmp: Path, emulation: str) -> Path:
    text = drop_tables(CASE_STUDY, "emulation") + "\n[emulation]\n" + emulation
    path = tmp / "scenario.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    path = _scenario(tmp_path_factory.mktemp("serve"), "speedup = 50\nkv_rate_mbit = 800\n")
    with EmulatedClusters(path, netns=False) as c:
        yield c


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), json.loads(err.read())


def _stream(url: str, body: dict) -> list[dict | str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    events: list[dict | str] = []
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _words(n: int, salt: str) -> str:
    return " ".join(f"{salt}{i}" for i in range(n))


def test_streamed_completion_has_every_token_then_usage_and_breakdown(clusters):
    body = {
        "model": clusters.model,
        "prompt": _words(30_000, "a"),
        "max_tokens": 7,
        "min_tokens": 7,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _stream(clusters.urls["prfaas"] + "/completions", body)
    assert events[-1] == "[DONE]"
    tokens = [e for e in events[:-1] if e["choices"] and e["choices"][0]["text"]]
    assert len(tokens) == 7
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    final = events[-2]
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 30_000 and final["usage"]["completion_tokens"] == 7
    assert final["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    b = final["prfaas"]
    # 30K uncached tokens exceed the planner's threshold (~19K): PrfaaS prefill, local decode.
    assert b["route"] == "remote" and b["prefill_site"] == "remote" and b["decode_site"] == "local"
    assert b["prefill_start_s"] <= b["prefill_end_s"] <= b["decode_start_s"]
    assert b["kv_transfer_start_s"] <= b["kv_transfer_end_s"] <= b["decode_start_s"]
    # KV bytes are the cost model's: fixed state + per-token KV of the 30K-token prompt.
    from harness.model.presets import load_model

    model = load_model("kimi-1t-hybrid")
    assert b["kv_bytes"] == model.state_bytes_per_seq + 30_000 * model.kv_bytes_per_token


def test_short_prompt_prefills_locally_and_a_repeat_hits_the_prefix_cache(clusters):
    body = {"model": clusters.model, "prompt": _words(2000, "cache"), "max_tokens": 2}
    status, _, first = _post(clusters.urls["prfaas"] + "/completions", body)
    assert status == 200 and first["prfaas"]["route"] == "local"
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _, _, second = _post(clusters.urls["prfaas"] + "/completions", body)
    # 2000 tokens = 3 full 512-token blocks + a partial one, all cached; but the 1T hybrid's linear
    # state was saved only after the last full block, so the repeat resumes there: 1,536 tokens.
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1536
    assert second["prfaas"]["cached_tokens"] == 1536
    assert second["choices"][0]["text"].split() == ["tok", "tok"]


def test_chat_stream_starts_with_the_role_and_counts_content_tokens(clusters):
    body = {
        "model": clusters.model,
        "messages": [{"role": "user", "content": _words(500, "chat")}],
        "max_tokens": 4,
        "stream": True,
    }
    events = _stream(clusters.urls["homogeneous"] + "/chat/completions", body)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [e for e in events[1:-1] if e["choices"][0]["delta"].get("content")]
    assert len(content) == 4
    assert events[-2]["prfaas"]["route"] == "local"  # no usage asked: the breakdown rides the last token


def test_vllm_pd_legs_prefill_remote_then_decode_local(clusters):
    prefill_url, decode_url = clusters.pd_urls["naive"]
    body = {"model": clusters.model, "prompt": _words(8000, "pd"), "max_tokens": 3, "stream": False}
    leg = {**body, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
    status, _, out = _post(prefill_url + "/completions", leg)
    assert status == 200
    params = out["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and len(params["transfer_id"]) == 32
    assert params["remote_engine_id"].startswith("remote/")
    status, _, done = _post(decode_url + "/completions", {**body, "kv_transfer_params": params})
    assert status == 200
    assert done["usage"]["completion_tokens"] == 3
    assert done["prfaas"]["route"] == "remote" and done["prfaas"]["prefill_site"] == "remote"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
        ({"prompt": 42}, 400, "prompt"),
        ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
        ({"prompt": "hi", "n": 2}, 400, "n"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "word " * 131_000, "max_tokens": 100}, 400, "prompt"),  # 131,100 > 131,072 context
    ],
)
def test_bad_requests_get_openai_errors(clusters, body, status, param):
    got, _, out = _post(clusters.urls["prfaas"] + "/completions", {"model": clusters.model, **body})
    assert got == status
    assert out["error"]["param"] == param and out["error"]["message"]


def test_body_that_is_not_json_and_unknown_topology(clusters):
    req = urllib.request.Request(clusters.urls["prfaas"] + "/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "JSON" in json.loads(err.value.read())["error"]["message"]
    err.value.close()
    status, _, out = _post(clusters.host_urls["local"] + "/nosuch/v1/completions", {"model": clusters.model})
    assert status == 404 and "nosuch" in out["error"]["message"]


def test_models_health_and_metrics_reflect_the_served_requests(clusters):
    with urllib.request.urlopen(clusters.urls["naive"] + "/models", timeout=10) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == [clusters.model]
    with urllib.request.urlopen(clusters.host_urls["local"] + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    body = {"model": clusters.model, "prompt": _words(100, "m"), "max_tokens": 1}
    for _ in range(3):
        assert _post(clusters.urls["naive"] + "/completions", body)[0] == 200
    with urllib.request.urlopen(clusters.host_urls["local"] + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    routed = samples['prfaas_requests_routed_total{route="remote",site="local",topology="naive"}']
    assert routed >= 3  # naive sends every prefill to the remote site
    assert samples['prfaas_kv_bytes_received_total{site="local"}'] > 0
    assert 'prfaas_decode_batch_size{instance="local-d0",site="local",topology="naive"}' in samples
    # The router's link view, read without changing it (tests/test_link_view.py).
    assert 0.0 <= samples['prfaas_link_utilisation{dst="local",src="remote",topology="naive"}'] <= 1.0


def test_full_queues_answer_429_with_retry_after(tmp_path):
    # speedup 1 and a 2-request limit: two long prefills hold the site while more arrive.
    path = _scenario(tmp_path, "speedup = 1\nmax_waiting = 2\nretry_after_s = 3\n")
    with EmulatedClusters(path, netns=False, topologies=["naive"]) as c:
        body = {"model": c.model, "prompt": _words(60_000, "q"), "max_tokens": 1}
        results: list[tuple[int, dict, dict]] = []
        threads = [
            threading.Thread(target=lambda: results.append(_post(c.urls["naive"] + "/completions", body)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    codes = sorted(r[0] for r in results)
    assert len(codes) == 4 and codes.count(200) >= 2 and 429 in codes
    rejected = next(r for r in results if r[0] == 429)
    assert rejected[1]["Retry-After"] == "3" and rejected[2]["error"]["type"] == "rate_limit_error"


def test_colocated_decodes_where_it_prefilled_and_global_cache_pulls_the_prefix(tmp_path):
    text = drop_tables(CASE_STUDY, "emulation").replace('prfaas_cache = "local"', 'prfaas_cache = "global"')
    assert 'prfaas_cache = "global"' in text
    text += '\n[topologies.colo]\nkind = "colocated"\nlocal_instances = 2\n'
    path = tmp_path / "scenario.toml"
    path.write_text(text + "\n[emulation]\nspeedup = 50\n")
    with EmulatedClusters(path, netns=False, topologies=["colo", "prfaas"]) as c:
        status, _, colo = _post(
            c.urls["colo"] + "/completions", {"model": c.model, "prompt": _words(900, "c")}
        )
        assert status == 200
        b = colo["prfaas"]
        assert b["route"] == "colocated" and b["decode_instance"] == b["prefill_instance"]
        assert "kv_bytes" not in b  # nothing moved
        # 30K fresh tokens go to the PrfaaS site, whose cache then holds 58 full blocks (29,696 tokens).
        first = _words(30_000, "g")
        _, _, a = _post(
            c.urls["prfaas"] + "/completions", {"model": c.model, "prompt": first, "max_tokens": 1}
        )
        assert a["prfaas"]["route"] == "remote"
        # The same prefix plus 2,000 new tokens: 2,304 uncached anywhere, below the threshold, so it
        # prefills locally after pulling the remote site's 29,696 cached tokens over the link.
        longer = first + " " + _words(2000, "h")
        _, _, b2 = _post(
            c.urls["prfaas"] + "/completions", {"model": c.model, "prompt": longer, "max_tokens": 1}
        )
        assert b2["prfaas"]["route"] == "local" and b2["prfaas"]["prefill_site"] == "local"
        assert b2["usage"]["prompt_tokens_details"]["cached_tokens"] == 29_696
        # The other way round: 5,000 tokens prefill locally; extended by 20,000 fresh ones, 20,392 are
        # uncached anywhere (above the threshold), so the remote site prefills after pulling the local
        # site's 9 full blocks (4,608 tokens) across the link.
        short = _words(5_000, "k")
        _, _, c1 = _post(
            c.urls["prfaas"] + "/completions", {"model": c.model, "prompt": short, "max_tokens": 1}
        )
        assert c1["prfaas"]["route"] == "local"
        _, _, c2 = _post(
            c.urls["prfaas"] + "/completions",
            {"model": c.model, "prompt": short + " " + _words(20_000, "m"), "max_tokens": 1},
        )
        assert c2["prfaas"]["route"] == "remote" and c2["prfaas"]["prefill_site"] == "remote"
        assert c2["usage"]["prompt_tokens_details"]["cached_tokens"] == 4_608
        sent = {}
        for site in ("local", "remote"):
            with urllib.request.urlopen(c.host_urls[site] + "/metrics", timeout=10) as resp:
                line = next(
                    ln
                    for ln in resp.read().decode().splitlines()
                    if ln.startswith("prfaas_kv_model_bytes_sent")
                )
            sent[site] = float(line.rsplit(" ", 1)[1])
    from harness.model.presets import load_model

    model = load_model("kimi-1t-hybrid")

    def kv(n: int) -> int:
        return model.state_bytes_per_seq + n * model.kv_bytes_per_token

    # Remote: the first prompt's KV, the prefix it pushed, the third prompt's KV. Local: the prefix it pushed.
    assert sent == {"remote": kv(30_000) + kv(29_696) + kv(25_000), "local": kv(4_608)}


def test_the_case_study_network_is_rescaled_to_the_speedup():
    # workloads/paper-case-study.toml's [network] link says 800 Mbit/s and 0.5 ms (5 ms at s = 10);
    # served at s = 4 the delay must be 5 / 4 ms, and KV bytes scale by (800 Mbit / 100 Gbit) / 4.
    with EmulatedClusters(
        REPO / "workloads" / "paper-case-study.toml", netns=False, speedup=4, topologies=["naive"]
    ) as c:
        info = c.describe()
    assert info["delay_ms"] == pytest.approx(1.25) and info["kv_rate_mbit"] == 800
    assert info["byte_scale"] == pytest.approx(0.008 / 4)


def test_replay_records_the_shaping_backend_that_serve_declares_unless_told(clusters, tmp_path):
    # A standalone serve + replay: each site's model card names what shapes its link (loopback here:
    # no namespaces); replay records it as the run's backend, and an explicit flag wins over it.
    trace = tmp_path / "t.jsonl"
    rows = ({"timestamp": 200 * i, "input_length": 64, "output_length": 4, "hash_ids": [i]} for i in range(2))
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with urllib.request.urlopen(clusters.urls["naive"] + "/models", timeout=10) as resp:
        card = json.loads(resp.read())["data"][0]
    assert card["prfaas"] == {"shaping_backend": clusters.backend, "site": "local"}
    base = ["replay", "--endpoint", clusters.urls["naive"], "--model", clusters.model, "--trace", str(trace)]
    for flags, expected in (([], clusters.backend), (["--shaping-backend", "netem"], "netem")):
        out = tmp_path / f"run{len(flags)}"
        res = CliRunner().invoke(main, [*base, "--quiet", "--out", str(out), *flags])
        assert res.exit_code == 0, res.output
        assert read_meta(out)["shaping_backend"] == expected
    assert clusters.backend == "loopback"


def test_a_server_that_declares_no_backend_records_none(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        json.dumps({"timestamp": 0, "input_length": 8, "output_length": 2, "hash_ids": [1]}) + "\n"
    )
    with ServerThread(FakeServer(itl_s=0.001)) as srv:
        argv = ["replay", "--endpoint", srv.url, "--model", "m", "--trace", str(trace), "--quiet", "--out"]
        res = CliRunner().invoke(main, [*argv, str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert read_meta(tmp_path / "r")["shaping_backend"] == "none"
