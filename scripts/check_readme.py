"""Run every code block of README.md as written, in order, from a fresh-clone-like copy of the repository,
offline; a block whose preceding line is `<!-- needs: WHAT -->` is skipped (WHAT: network, gpu, minutes,
test-suite) unless --run names WHAT.

    python scripts/check_readme.py                 # exit status 0 when every block ran
    python scripts/check_readme.py --run minutes   # also the blocks that take minutes

The copy holds what `git ls-files` lists (tracked and untracked, not ignored): no runs/, data/ or .venv of
this checkout, so a block that needs a file no command of the README makes fails here as it would for a
user. `bash` blocks run in bash (-e: the first failing line fails the block); `python` blocks run as their
own script, so each must import what it uses. The commands are those of the Python running this script
(its folder goes first on PATH).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w-]+) -->\n)?```(?P<language>\w+)\n(?P<code>.*?)```", re.S)
RUNNABLE = {"bash", "python"}


def blocks(text):
    """[(language, code, needs or None)] of the fenced blocks, in order."""
    return [(m["language"], m["code"], m["needs"]) for m in BLOCK.finditer(text)]


def fresh_copy(destination):
    """The repository's files as a clone would have them (tracked, and untracked but not ignored)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def environment(home):
    """Offline, with this Python's commands first on PATH and caches in `home` (nothing of the user's)."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(home / "hf"),
                TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")


def run_blocks(readme, workdir, run_also=(), timeout=1800):
    """Run the blocks of `readme` in `workdir`; returns [(index, language, needs, returncode or None, output)]."""
    env = environment(workdir.parent)
    report = []
    for index, (language, code, needs) in enumerate(blocks(readme)):
        if language not in RUNNABLE or (needs is not None and needs not in run_also):
            report.append((index, language, needs, None, ""))
            continue
        if language == "bash":
            command = ["bash", "-e", "-c", code]
        else:
            script = workdir.parent / f"readme_block_{index}.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, str(script)]
        finished = subprocess.run(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        report.append((index, language, needs, finished.returncode, finished.stdout + finished.stderr))
        if finished.returncode != 0:
            break  # later blocks may need what this one makes
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="*", default=[], help="also run the blocks that need these (e.g. minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the copy and say where it is")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="check_readme_"))
    workdir = fresh_copy(folder / "serpent-hf")
    report = run_blocks((workdir / "README.md").read_text(encoding="utf-8"), workdir, args.run)
    failed = False
    for index, language, needs, returncode, output in report:
        if returncode is None:
            print(f"block {index} ({language}): skipped" + (f" (needs: {needs})" if needs else ""))
        else:
            print(f"block {index} ({language}): {'ok' if returncode == 0 else f'FAILED, exit status {returncode}'}")
            if returncode != 0:
                failed = True
                print(output[-4000:])
    print(f"ran {sum(r[3] is not None for r in report)} of {len(report)} blocks" + (", one failed" if failed else ""))
    if args.keep:
        print(f"the copy: {workdir}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
