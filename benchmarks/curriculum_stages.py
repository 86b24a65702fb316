"""Copy accuracy against training steps over the stages of a sparse_copying.py curriculum, one line per arm.

A curriculum runs in stages: each stage is a sweep of sparse_copying.py whose runs continue (`--init_from`) the
models of the stage before at the same filler length. This reads the finished runs of every stage and shows whether
an arm is still learning when the last stage stops, and how far its copy carries at longer filler:

    python benchmarks/curriculum_stages.py --length 1024 --output runs/curriculum_stages.json --stages \
        runs/sparse-curriculum,runs/sparse-open-curriculum runs/sparse-curriculum2,runs/sparse-open-curriculum2

Each argument of --stages is one stage: its sparse_copying.py output folders, separated by commas (arms trained in
separate sweeps). --start names the folders of the runs the first stage continued (trained at --start_length, e.g.
128 filler tokens), so that training seconds also count from the very start: arms compare at equal time. Writes
OUTPUT (per arm and stage: steps and training seconds at the length so far, seconds from the start, every seed's
copy accuracy, mean, standard deviation, seeds >= 90%, and the same at each extrapolated length) and OUTPUT with
.png (accuracy against steps, against seconds from the start, and at the longest extrapolated length).
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from seed_statistics import mean_std  # noqa: E402
from sparse_copying import SOLVED  # noqa: E402


def stage_runs(folders, length):
    """{arm: {seed: result}} of every finished run at `length` in one stage's output folders."""
    runs = {}
    for folder in folders:
        for path in sorted(Path(folder).glob(f"length{length}/*/seed*/result.json")):
            result = json.loads(path.read_text())
            runs.setdefault(result["model"], {})[result["seed"]] = result
    return runs


def spread(values):
    return {"per_seed": values, **mean_std(values), "seeds_solved": sum(value >= SOLVED for value in values)}


def seconds_from_start(seconds_at_length, start_runs, seeds):
    """Seconds at the length plus the mean over `seeds` of their start runs' seconds; None if a seed has none."""
    if not all(seed in start_runs for seed in seeds):
        return None
    return seconds_at_length + statistics.fmean(start_runs[seed]["train_seconds"] for seed in seeds)


def summarise(stages, length, start=(), start_length=None):
    """{arm: [one row per stage the arm has runs in]}; steps at the length add up over the stages (each run's last
    logged step), and so do training seconds (the mean over the stage's seeds), so arms compare at equal steps or
    at equal time. `start`: the folders of the runs at `start_length` that the first stage continued; the mean of
    their seconds over a row's seeds begins that row's count of seconds from the start (None without them)."""
    table, steps, seconds = {}, {}, {}
    before = stage_runs(start, start_length) if start else {}
    for index, folders in enumerate(stages):
        for arm, by_seed in stage_runs(folders, length).items():
            seeds = sorted(by_seed)
            trained = max(by_seed[seed]["train_loss"][-1][0] for seed in seeds)
            steps[arm] = steps.get(arm, 0) + trained
            seconds[arm] = seconds.get(arm, 0.0) + statistics.fmean(by_seed[seed]["train_seconds"] for seed in seeds)
            row = {"stage": index + 1, "steps_at_length": steps[arm], "train_seconds_at_length": seconds[arm],
                   "train_seconds_from_start": seconds_from_start(seconds[arm], before.get(arm, {}), seeds),
                   "seeds": seeds,
                   "copy_accuracy": spread([by_seed[seed]["copy_accuracy"] for seed in seeds])}
            tested = [by_seed[seed].get("extrapolation", {}) for seed in seeds]  # {length as text: accuracy}
            longer = sorted({n for lengths in tested for n in lengths}, key=int)
            row["extrapolation"] = {n: spread([lengths[n] for lengths in tested if n in lengths]) for n in longer}
            table.setdefault(arm, []).append(row)
    return table


def plot(table, length, path):
    """One panel per (x, tested length): accuracy at the training length against steps there and, when the table
    counts seconds from the start, against those; the longest extrapolated length against steps."""
    longest = max((int(n) for rows in table.values() for row in rows for n in row["extrapolation"]), default=None)

    def at_length(row):
        return row["copy_accuracy"]

    steps = ("steps_at_length", f"training steps at {length} filler tokens")
    panels = [(str(length), at_length, steps)]
    if any(row["train_seconds_from_start"] is not None for rows in table.values() for row in rows):
        panels.append((str(length), at_length, ("train_seconds_from_start", "training seconds from the start")))
    if longest is not None:
        panels.append((str(longest), lambda row: row["extrapolation"].get(str(longest)), steps))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (tested, cell_of, (x_key, x_label)) in zip(axes[0], panels):
        for arm, rows in sorted(table.items()):
            points = [(row[x_key], cell_of(row)) for row in rows if cell_of(row) and row[x_key] is not None]
            if not points:
                continue
            xs = [x for x, _ in points]
            line = axis.errorbar(xs, [cell["mean"] for _, cell in points], [cell["std"] for _, cell in points],
                                 marker="o", capsize=3, label=arm)
            for x, cell in points:
                axis.scatter([x] * len(cell["per_seed"]), cell["per_seed"], s=10, alpha=0.4,
                             color=line[0].get_color())
        axis.axhline(SOLVED, color="grey", linestyle=":", linewidth=1)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(x_label)
        axis.set_ylabel(f"copy accuracy at {tested} filler tokens")
        axis.set_title("mean ± sd over seeds; dots: each seed", fontsize=9)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def folder_list(text):
    """Output folders given as one comma-separated argument."""
    return [folder for folder in text.split(",") if folder]


def fmt_seconds(seconds):
    return "-" if seconds is None else f"{seconds:.0f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", required=True,
                        help="one argument per stage, in order: its output folders, comma-separated")
    parser.add_argument("--length", type=int, required=True, help="the filler length every stage trained at")
    parser.add_argument("--start", default="", help="the output folders (comma-separated) of the runs the first "
                        "stage continued, to count training seconds from the start")
    parser.add_argument("--start_length", type=int, default=None, help="the filler length --start trained at")
    parser.add_argument("--output", default="runs/curriculum_stages.json")
    args = parser.parse_args()
    stages = [folder_list(stage) for stage in args.stages]
    if args.start and args.start_length is None:
        parser.error("--start needs --start_length, the filler length its runs trained at")
    table = summarise(stages, args.length, folder_list(args.start), args.start_length)
    if not table:
        raise SystemExit(f"no finished run at length {args.length} in any of the stages' folders")
    for arm, rows in sorted(table.items()):
        for row in rows:
            cell = row["copy_accuracy"]
            print(f"{arm:22s} stage {row['stage']} ({row['steps_at_length']} steps, "
                  f"{row['train_seconds_at_length']:.0f} s there, {fmt_seconds(row['train_seconds_from_start'])} "
                  f"from the start): {cell['mean']:.3f} ± "
                  f"{cell['std']:.3f}, {cell['seeds_solved']} of {len(row['seeds'])} >= {SOLVED}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"options": vars(args), "arms": table}, indent=2) + "\n")
    plot(table, args.length, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
