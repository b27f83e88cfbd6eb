"""Entry point used with Ray's job submission: `python -m jobs.entrypoint --dataset coco …`.

Inside a submitted job Ray sets RAY_ADDRESS, so the annotation job attaches to that cluster
instead of starting a local runtime. Arguments are those of `moai annotate`.
"""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
