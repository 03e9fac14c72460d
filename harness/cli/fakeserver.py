"""``prfaas-bench fake-server``: an OpenAI-compatible streaming server with set timings, to check a pipeline."""

from __future__ import annotations

import click

from harness.loadgen.fakeserver import FAULTS, WRITES, FakeServer, serve_fake


@click.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one)."
)
@click.option("--model", help="Serve only this model name (others get vLLM's 404); default: any name.")
@click.option(
    "--ttft-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay from request to first token.",
)
@click.option(
    "--itl-ms", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Delay between tokens."
)
@click.option(
    "--output-tokens",
    type=click.IntRange(min=1),
    help="Stop after N tokens, as at an end-of-sequence (ignore_eos and min_tokens win); "
    "default: always max_tokens.",
)
@click.option(
    "--tokenizer",
    type=click.Path(dir_okay=False),
    help="tokenizer.json that POST /tokenize and usage.prompt_tokens count with, special tokens included "
    "(default: one token per word).",
)
@click.option("--fault", type=click.Choice(FAULTS), help="Misbehave this way (the list above).")
@click.option(
    "--fault-every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Only every N-th request misbehaves.",
)
@click.option(
    "--writes",
    type=click.Choice(WRITES),
    default="burst",
    show_default=True,
    help="With --itl-ms 0: a stream in 64 KiB writes (burst), one write per token chunk (token), or one "
    "per chunk each encoded by json.dumps as it goes out (token-dumps: a Python server's CPU per token).",
)
def command(host, port, model, ttft_ms, itl_ms, output_tokens, tokenizer, fault, fault_every, writes) -> None:
    """Serve /v1/completions and /v1/chat/completions with set timings, to check a pipeline end to end.

    No model: each token is the word "tok", the first one --ttft-ms after the request and the next
    ones --itl-ms apart, in SSE chunks with vLLM's fields (id, object, created, model, text or delta,
    logprobs, finish_reason, stop_reason) and the usage chunk when stream_options.include_usage asks
    for it. max_tokens, min_tokens and ignore_eos are honoured; prompt tokens are words. Also serves
    /v1/models, /health, vLLM's POST /tokenize and its PD-proxy kv_transfer_params, so
    `prfaas-bench replay` (or any client) can be run against known numbers: TTFT = --ttft-ms, TPOT =
    --itl-ms, plus the client's own overhead.

    \b
    --fault stall        never answer            --fault reset       close before answering
    --fault stall_body   headers, then silence   --fault disconnect  close mid-stream
    --fault garbage      a non-SSE line          --fault no_done     end without [DONE]
    --fault error_event  an error chunk          --fault http_500 / http_429  that status

    Runs until Ctrl-C.
    """
    server = FakeServer(
        first_token_delay_s=ttft_ms / 1e3,
        itl_s=itl_ms / 1e3,
        output_tokens=output_tokens,
        model=model,
        writes=writes,
        mode_for=(lambda n: fault if (n + 1) % fault_every == 0 else "ok") if fault else None,
    )
    if tokenizer:
        from harness.traces.prompts import load_tokenizer

        server.tokenizer = load_tokenizer(tokenizer)

    def ready(url: str) -> None:
        faults = f", fault {fault} every {fault_every}" if fault else ""
        click.echo(
            f"fake-server: {url}/v1 (model {model or 'any'}, TTFT {ttft_ms:g} ms, ITL {itl_ms:g} ms{faults}); "
            "Ctrl-C stops",
            err=True,
        )

    serve_fake(server, host, port, on_ready=ready)
