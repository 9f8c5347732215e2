"""One lane of ``partbench study``: several ``partbench run`` commands, parsed by the command
line as typed, in one process, one after the other.

    python -m partbench.lane '[["run", "--encoder", "mini-dino", ...], ["run", ...]]'

A lane's later commands (the study's projection retrievals) are short: started as processes
of their own, each spent 6-7 s importing torch and timm again for 4.5 s of scoring, on the
lane that finishes last."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Run each command of the JSON list in ``argv[0]``; stop at the first that fails and
    return its exit status (0 when all succeed)."""
    from partbench.cli import cli

    commands = json.loads((sys.argv[1:] if argv is None else argv)[0])
    for args in commands:
        try:
            cli.main(args=args, prog_name="partbench", standalone_mode=False)
        except SystemExit as exc:  # the commands end with sys.exit on failure, as typed
            if exc.code:
                return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
