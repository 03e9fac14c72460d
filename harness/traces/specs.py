"""Parse the compact command-line specs of ``trace synth`` (and the ``--window`` of convert/replay).

    lengths   lognormal:mu=9.9,sigma=1,lo=128,hi=131072 | fixed:N | uniform:A,B | empirical:FILE
    arrivals  poisson:RATE | gamma:RATE,CV | constant:RATE
    prompts   count=K,tokens=L[,share=F][,zipf=S]
    sessions  turns=T[,concurrent=C | ,think=S][,max=N]
    agentic   steps=T[,think=S][,max=N]
    window    START:DUR (trace seconds)

Mistakes raise ``InputError`` naming the option and the expected form.
"""

from __future__ import annotations

from harness.errors import InputError
from harness.traces.arrivals import ArrivalProcess, Constant, Gamma, Poisson
from harness.traces.distributions import Empirical, Fixed, LengthDistribution, TruncatedLogNormal, Uniform
from harness.traces.synth import Sessions, SystemPrompts

LENGTH_FORMS = "lognormal:mu=M,sigma=S[,lo=A,hi=B] | fixed:N | uniform:A,B | empirical:FILE"
ARRIVAL_FORMS = "poisson:RATE | gamma:RATE,CV | constant:RATE"
PAPER_LOGNORMAL_BOUNDS = {"lo": 128.0, "hi": 131072.0}


def _number(text: str, option: str, what: str, kind: type = float) -> float:
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{option}: {what} must be a number, got {text!r}") from None


def _numbers(args: str, option: str, names: tuple[str, ...], kind: type = float) -> list:
    parts = [p.strip() for p in args.split(",")] if args else []
    if len(parts) != len(names):
        raise InputError(f"{option}: expected {len(names)} value(s) ({', '.join(names)}), got {args!r}")
    return [_number(p, option, n, kind) for p, n in zip(parts, names, strict=True)]


def _keyvalues(text: str, option: str, allowed: dict[str, type], required: tuple[str, ...]) -> dict:
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise InputError(f"{option}: expected key=value with keys {', '.join(allowed)}, got {part!r}")
        out[key] = _number(value.strip(), option, key, allowed[key])
    missing = [k for k in required if k not in out]
    if missing:
        raise InputError(f"{option}: missing {', '.join(missing)} (in {text!r})")
    return out


def parse_window(text: str, option: str = "--window") -> tuple[float, float]:
    """``START:DUR`` in trace seconds -> ``(start, duration)``, checked before any trace is read."""
    start, sep, dur = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start_s, dur_s = float(start), float(dur)
    except ValueError:
        raise InputError(
            f"{option} must be START:DURATION in trace seconds, e.g. 600:300, got {text!r}"
        ) from None
    if not (start_s >= 0 and dur_s > 0):
        raise InputError(f"{option} needs START >= 0 and DURATION > 0, got {text!r}")
    return start_s, dur_s


def parse_lengths(spec: str, option: str = "--lengths", *, column: str = "input") -> LengthDistribution:
    """A length distribution; ``empirical:FILE`` resamples FILE's ``column`` ("input" or "output") lengths."""
    kind, _, args = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "lognormal":
        kv = _keyvalues(
            args, option, {"mu": float, "sigma": float, "lo": float, "hi": float}, ("mu", "sigma")
        )
        return TruncatedLogNormal(**{**PAPER_LOGNORMAL_BOUNDS, **kv})
    if kind == "fixed":
        return Fixed(*_numbers(args, option, ("N",), int))
    if kind == "uniform":
        return Uniform(*_numbers(args, option, ("A", "B"), int))
    if kind == "empirical":
        from harness.traces.readers import read_trace  # I/O edge: only this form reads a file

        if not args:
            raise InputError(f"{option}: empirical needs a trace file, e.g. empirical:trace.jsonl")
        trace = read_trace(args)
        return Empirical(trace.input_tokens if column == "input" else trace.output_tokens)
    raise InputError(f"{option}: unknown length distribution {spec!r}; use {LENGTH_FORMS}")


def parse_arrivals(spec: str, option: str = "--arrival") -> ArrivalProcess:
    """An arrival process."""
    kind, _, args = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "poisson":
        return Poisson(*_numbers(args, option, ("RATE",)))
    if kind == "gamma":
        return Gamma(*_numbers(args, option, ("RATE", "CV")))
    if kind == "constant":
        return Constant(*_numbers(args, option, ("RATE",)))
    raise InputError(f"{option}: unknown arrival process {spec!r}; use {ARRIVAL_FORMS}")


def parse_system_prompts(spec: str, option: str = "--system-prompts") -> SystemPrompts:
    kv = _keyvalues(
        spec, option, {"count": int, "tokens": int, "share": float, "zipf": float}, ("count", "tokens")
    )
    return SystemPrompts(**kv)


def parse_sessions(spec: str, user_tokens: LengthDistribution, option: str = "--sessions") -> Sessions:
    kv = _keyvalues(spec, option, {"turns": float, "concurrent": int, "max": int, "think": float}, ("turns",))
    if "think" in kv and "concurrent" in kv:
        raise InputError(
            f"{option}: give concurrent=C or think=S, not both (with think, arrivals start sessions)"
        )
    return Sessions(
        mean_turns=kv["turns"],
        concurrent=kv.get("concurrent", 32),
        user_tokens=user_tokens,
        max_input=kv.get("max", 131072),
        think_s=kv.get("think"),
    )


AGENTIC_OUTPUT = "uniform:16,128"  # a tool call: a short generated request
AGENTIC_RESULT = "uniform:256,4096"  # a tool result appended to the context before the next step


def parse_agentic(spec: str, tool_results: LengthDistribution, option: str = "--agentic") -> Sessions:
    """``steps=T[,think=S][,max=N]``: agent sessions, a geometric number of steps with mean T, each step
    a short tool call whose result (``tool_results``) grows the context, the next step ``S`` seconds
    (exponential, default 0.5: the tool's latency) after the last; the arrival process starts sessions."""
    kv = _keyvalues(spec, option, {"steps": float, "think": float, "max": int}, ("steps",))
    return Sessions(
        mean_turns=kv["steps"], user_tokens=tool_results, max_input=kv.get("max", 131072),
        think_s=kv.get("think", 0.5),
    )  # fmt: skip
