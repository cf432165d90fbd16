"""``python -m vllm_workshop``."""

import sys

from vllm_workshop.cli import main

sys.exit(main())
