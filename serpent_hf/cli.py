"""How the console commands (serpent-train, serpent-eval, serpent-train-lra, serpent-upcycle) end on an error:
one line naming the problem, `serpent-train: error: ...`, and exit status 1; with `--debug` anywhere on the
command line, the full traceback instead.

A bare `--debug` (followed by nothing or by another option) is taken out before the command parses its options;
`--debug VALUE` stays, since TrainingArguments has a `debug` option of its own that takes a value.
"""

import os
import sys


def take_debug(argv):
    """argv -> (argv without a bare --debug, whether it was there)."""
    kept, debug = [], False
    for index, token in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token == "--debug" and (following is None or following.startswith("--")):
            debug = True
        else:
            kept.append(token)
    return kept, debug


def run_command(main, argv=None):
    """Run `main(argv)` as a console command: its return value is dropped (a console script turns a returned
    value into exit status 1), and an exception becomes one line on stderr unless --debug asks for the traceback."""
    argv, debug = take_debug(list(sys.argv[1:] if argv is None else argv))
    name = os.path.basename(sys.argv[0]) or "serpent"
    if debug:
        main(argv)
        return
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - every failure gets the one-line report; --debug shows the rest
        message = str(error).strip() or type(error).__name__
        if not isinstance(error, (ValueError, FileNotFoundError)):  # not one of our own checks: say what it was
            message = f"{type(error).__name__}: {message}"
        print(f"{name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(1)
