"""Copy accuracy against training steps over the stages of a sparse_copying.py curriculum, one line per arm.

A curriculum runs in stages: each stage is a sweep of sparse_copying.py whose runs continue (`--init_from`) the
models of the stage before at the same filler length. This reads the finished runs of every stage and shows whether
an arm is still learning when the last stage stops, and how far its copy carries at longer filler:

    python benchmarks/curriculum_stages.py --length 1024 --output runs/curriculum_stages.json --stages \
        runs/sparse-curriculum,runs/sparse-open-curriculum runs/sparse-curriculum2,runs/sparse-open-curriculum2

Each argument of --stages is one stage: its sparse_copying.py output folders, separated by commas (arms trained in
separate sweeps). Writes OUTPUT (per arm and stage: steps and training seconds at the length so far, every seed's copy accuracy,
mean, standard deviation, seeds >= 90%, and the same at each extrapolated length) and OUTPUT with .png.
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


def summarise(stages, length):
    """{arm: [one row per stage the arm has runs in]}; steps at the length add up over the stages (each run's last
    logged step), and so do training seconds (the mean over the stage's seeds), so arms compare at equal steps or
    at equal time."""
    table, steps, seconds = {}, {}, {}
    for index, folders in enumerate(stages):
        for arm, by_seed in stage_runs(folders, length).items():
            seeds = sorted(by_seed)
            trained = max(by_seed[seed]["train_loss"][-1][0] for seed in seeds)
            steps[arm] = steps.get(arm, 0) + trained
            seconds[arm] = seconds.get(arm, 0.0) + statistics.fmean(by_seed[seed]["train_seconds"] for seed in seeds)
            row = {"stage": index + 1, "steps_at_length": steps[arm], "train_seconds_at_length": seconds[arm],
                   "seeds": seeds,
                   "copy_accuracy": spread([by_seed[seed]["copy_accuracy"] for seed in seeds])}
            tested = [by_seed[seed].get("extrapolation", {}) for seed in seeds]  # {length as text: accuracy}
            longer = sorted({n for lengths in tested for n in lengths}, key=int)
            row["extrapolation"] = {n: spread([lengths[n] for lengths in tested if n in lengths]) for n in longer}
            table.setdefault(arm, []).append(row)
    return table


def plot(table, length, path):
    longest = max((int(n) for rows in table.values() for row in rows for n in row["extrapolation"]), default=None)
    panels = [(str(length), lambda row: row["copy_accuracy"])]
    if longest is not None:
        panels.append((str(longest), lambda row: row["extrapolation"].get(str(longest))))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (tested, cell_of) in zip(axes[0], panels):
        for arm, rows in sorted(table.items()):
            points = [(row["steps_at_length"], cell_of(row)) for row in rows if cell_of(row)]
            steps = [step for step, _ in points]
            line = axis.errorbar(steps, [cell["mean"] for _, cell in points], [cell["std"] for _, cell in points],
                                 marker="o", capsize=3, label=arm)
            for step, cell in points:
                axis.scatter([step] * len(cell["per_seed"]), cell["per_seed"], s=10, alpha=0.4,
                             color=line[0].get_color())
        axis.axhline(SOLVED, color="grey", linestyle=":", linewidth=1)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(f"training steps at {length} filler tokens")
        axis.set_ylabel(f"copy accuracy at {tested} filler tokens")
        axis.set_title("mean ± sd over seeds; dots: each seed", fontsize=9)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", required=True,
                        help="one argument per stage, in order: its output folders, comma-separated")
    parser.add_argument("--length", type=int, required=True, help="the filler length every stage trained at")
    parser.add_argument("--output", default="runs/curriculum_stages.json")
    args = parser.parse_args()
    stages = [[folder for folder in stage.split(",") if folder] for stage in args.stages]
    table = summarise(stages, args.length)
    if not table:
        raise SystemExit(f"no finished run at length {args.length} in any of the stages' folders")
    for arm, rows in sorted(table.items()):
        for row in rows:
            cell = row["copy_accuracy"]
            print(f"{arm:22s} stage {row['stage']} ({row['steps_at_length']} steps, "
                  f"{row['train_seconds_at_length']:.0f} s): {cell['mean']:.3f} ± "
                  f"{cell['std']:.3f}, {cell['seeds_solved']} of {len(row['seeds'])} >= {SOLVED}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"options": vars(args), "arms": table}, indent=2) + "\n")
    plot(table, args.length, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
