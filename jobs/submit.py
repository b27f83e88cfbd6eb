"""Submit an annotation job to a running Ray cluster through Ray's job API and follow it.

    python -m jobs.submit --address http://127.0.0.1:8265 -- --dataset sample --executor ray

The job runs `python -m jobs.entrypoint <args>` with this repository as its working directory
(uploaded by Ray unless the cluster shares the file system: then pass --no-upload).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", "data", "outputs", ".git", "**/__pycache__", "*.egg-info"]
AGENT_WAIT_S = 180.0  # how long a fresh head's job agent may take to come up


def submit(
    address: str,
    annotate_args: list[str],
    upload: bool = True,
    env: dict | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 1.0,
) -> tuple[str, str, str]:
    """Returns (job id, final status, logs)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    runtime_env: dict = {"env_vars": dict(env or {})}
    if upload:
        runtime_env.update(working_dir=str(REPO), excludes=EXCLUDES)
    entrypoint = " ".join([sys.executable, "-m", "jobs.entrypoint", *annotate_args])
    deadline = time.monotonic() + timeout_s
    agent_wait = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, entrypoint_num_cpus=0)
            break
        except RuntimeError as err:
            # Right after `ray start` the head's job agent may not be up yet: Ray answers 500 "No available
            # agent to submit job, please try again later". Try again for up to AGENT_WAIT_S, then say so
            # (a loaded 2-core machine once outwaited a minute).
            if "No available agent" not in str(err) or time.monotonic() > agent_wait:
                raise
            time.sleep(2.0)
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    return job_id, str(status.value if hasattr(status, "value") else status), client.get_job_logs(job_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address", default="http://127.0.0.1:8265", help="the cluster's dashboard/job address"
    )
    parser.add_argument("--no-upload", action="store_true", help="the cluster shares this file system")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable), e.g. MOAI_DATA=/data",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    parser.add_argument(
        "annotate_args", nargs=argparse.REMAINDER, help="arguments for moai annotate (after --)"
    )
    args = parser.parse_args(argv)
    annotate_args = [a for a in args.annotate_args if a != "--"]
    env = dict(item.split("=", 1) for item in args.env)
    job_id, status, logs = submit(
        args.address, annotate_args, upload=not args.no_upload, env=env, timeout_s=args.timeout
    )
    print(logs)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
