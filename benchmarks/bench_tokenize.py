"""What does fitting prompts to a server's /tokenize cost? Prints figures; not a test.

    .venv/bin/python benchmarks/bench_tokenize.py [--rows 100,1000]

The server is ``prfaas-bench fake-server --tokenizer FILE`` in its own process, answering vLLM's
``POST /tokenize`` with a byte-level BPE trained here (no download):

* ``bpe-8k``: 8,000 entries trained on text of the prompt vocabulary, so (as in real 30k-200k
  vocabularies) every vocabulary word with its leading space is one token;
* ``bpe-300``: 300 entries, so most words split into 2-4 tokens (the worst case for calibration).

For the first N rows of the real Mooncake conversation trace (mean input 12K tokens) it prints the
/tokenize calls (calibration, then per prompt), the wall time of ``prepare_prompts`` and the server's
tokenizing rate, and checks every fitted prompt with the same tokenizer locally.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from harness.loadgen.fakeserver import fake_server_process
from harness.loadgen.tokenize import prepare_prompts
from harness.traces.prompts import VOCABULARY, PromptSynth
from harness.traces.readers import read_trace

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def _bpe(vocab_size: int, path: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(1)
    corpus = [" ".join(rng.choice(VOCABULARY, 50)) for _ in range(2000)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    tok.save(str(path))
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100,1000", help="comma-separated numbers of trace rows to fit")
    args = ap.parse_args()
    trace = read_trace(str(TRACE))
    print(
        f"trace: {TRACE.name}, {len(trace)} rows; load average {Path('/proc/loadavg').read_text().split()[0]}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in (("bpe-8k", 8000), ("bpe-300", 300)):
            path = Path(tmp) / f"{name}.json"
            tok = _bpe(size, path)
            one = sum(len(tok.encode(" " + w).ids) == 1 for w in VOCABULARY)
            print(f"\n{name}: {one} of {len(VOCABULARY)} vocabulary words are one token")
            with fake_server_process("--tokenizer", str(path)) as url:
                for n in (int(x) for x in args.rows.split(",")):
                    rows = range(min(n, len(trace)))
                    fits, prep = prepare_prompts(trace, rows, url=url, model="m")
                    synth = PromptSynth(fits=fits, block_tokens=trace.block_tokens)
                    tokens = int(trace.input_tokens[: len(rows)].sum())
                    exact = all(
                        len(tok.encode(synth.prompt(trace.hash_ids(r), int(trace.input_tokens[r]), r)).ids)
                        == trace.input_tokens[r]
                        for r in rows
                    )
                    d = prep.describe()
                    print(
                        f"  {len(rows):>5} prompts ({tokens / 1e6:.1f} M tokens): {d['calibration_calls']} "
                        f"calibration calls + {d['calls_per_prompt']:.3f} calls/prompt; prepared in "
                        f"{prep.seconds:.2f} s ({prep.seconds / len(rows) * 1e3:.1f} ms/prompt, "
                        f"{tokens / prep.seconds / 1e6:.2f} M tokens/s); all exact: {exact}"
                    )


if __name__ == "__main__":
    main()
