"""One lane of ``partbench study``: several runs of the runner, each a typed RunRequest, in one
process, one after the other, printing what ``partbench run`` prints.

    python -m partbench.lane '[{"encoders": ["mini-dino"], "tasks": ["all"], "options": {...}}, ...]'

A lane's later runs (the study's projection retrievals) are short: started as processes of
their own, each spent 6-7 s importing torch and timm again for 4.5 s of scoring, on the lane
that finishes last."""

from __future__ import annotations

import json
import sys

from partbench.cli import _console, _print_outcomes, _problem, _progress, _registry, _store, user_errors
from partbench.errors import PartbenchError
from partbench.runner import RunRequest, run


@user_errors
def run_request(request: RunRequest) -> None:
    """As ``partbench run`` does: progress and failures on stderr, the outcomes' table, and exit
    status 1 when a run failed."""
    err = _console(stderr=True)
    reg, store = _registry(), _store(None)  # the store's URL is PARTBENCH_DB
    with _progress(err) as progress:
        outcomes = run(reg, store, request.encoders, request.tasks, request.options, progress, _problem(err))
    _print_outcomes(outcomes)
    if any(o.status == "failed" for o in outcomes):
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run each request of the JSON list in ``argv[0]``; stop at the first that fails and return
    its exit status (0 when all succeed)."""
    try:
        requests = [RunRequest.from_json(r) for r in json.loads((sys.argv[1:] if argv is None else argv)[0])]
    except (PartbenchError, ValueError, TypeError) as exc:
        print(f"Error: the lane's requests: {exc}", file=sys.stderr)
        return 1
    for request in requests:
        try:
            run_request(request)
        except SystemExit as exc:  # a failed request ends as `partbench run` would
            if exc.code:
                return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
