"""Mean and standard deviation over seeds, the one spread every benchmark reports (no other imports, so any
benchmark can use it without side effects: common.py, for one, sets the Hub offline when imported)."""

import statistics


def mean_std(values):
    """{"mean", "std"} of a list of numbers; the sample standard deviation, 0 for a single value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
