"""What the CLI tests share: the environment that registers the tiny test
model in child processes, the console script's path, running the CLI in
process, and picking the one user-error line out of stderr."""

import os
import sys

from fiftyone_lazsl.testing import tiny_clip

#: Child processes see the tiny model's config through this variable.
ENV = {"FIFTYONE_LAZSL_MODEL_CONFIGS": str(tiny_clip._CONFIG)}
#: The installed ``fiftyone-lazsl`` console script of this interpreter's venv.
EXE = os.path.join(os.path.dirname(sys.executable), "fiftyone-lazsl")


def main_in_process(capsys, *args):
    """``cli.main(args)`` in this process: ``(status, stdout, stderr)``."""
    from fiftyone_lazsl.cli import main

    os.environ.update(ENV)
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(stderr, command="classify"):
    """The user-error line, checking it is alone of its kind and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [l for l in stderr.splitlines() if l.startswith(f"fiftyone-lazsl {command}: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]
