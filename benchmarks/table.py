"""Text formatting shared by the benchmark reports: benchmarks/run's
(report.py), writebench.py's and podmanbench.py's.  One place for how a
figure, a ratio, a table line, a target and the header's common lines are
written, so that the three reports read alike.

A result here is anything with `value` (the median) and `bad` (how many
measurements gave wrong answers), or None when it was not measured.
"""


def fmt(v):
    """A figure to about three significant digits: 1234, 12.3, 1.23."""
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def figure(result, ran=True):
    """A result's table cell: '-' when its system was not part of the run
    (RAN false), n/a when not measured, '!' after it when some answers
    were wrong."""
    if not ran:
        return "-"
    if result is None:
        return "n/a"
    return fmt(result.value) + ("!" if result.bad else "")


def ratio(num, den):
    """NUM's value / DEN's; None when either is not measured or DEN's value
    is not positive (no figure to divide by)."""
    if num is None or den is None or den.value <= 0:
        return None
    return num.value / den.value


def times(x):
    """A ratio's table cell: 1.23x, or empty when there is no ratio."""
    return "" if x is None else f"{x:.2f}x"


class Table:
    """Fixed-width columns one space apart: the first LEFT columns (labels)
    left-aligned, the others (figures, ratios) right-aligned.  A cell
    longer than its column is not cut, as with format widths."""

    def __init__(self, widths, left):
        self.widths = widths
        self.left = left

    def line(self, cells):
        return " ".join(f"{c:{w}s}" if i < self.left else f"{c:>{w}s}"
                        for i, (c, w) in enumerate(zip(cells, self.widths)))


def underlined(head, *more):
    """The column headings: HEAD, any MORE heading lines, then a rule as
    long as HEAD."""
    return [head, *more, "-" * len(head)]


def run_line(title, meta, *details):
    """The report's first line: TITLE, when, the machine, quick or full,
    any DETAILS, and how long the run took."""
    return ", ".join([title, meta["date"], f"kernel {meta['kernel']}", f"{meta['cpus']} CPUs",
                      f"{'quick' if meta['quick'] else 'full'} run", *details,
                      f"{meta['seconds']:.0f} s"])


def build_tag(meta):
    """The layerfs build's fingerprint, to follow the program's path."""
    return f"  [{meta['layerfs_build']}]" if meta["layerfs_build"] else ""


def load_line(meta):
    """The load average at the start and the end: a busy machine explains
    noisy figures."""
    return ("load average (1 min) at start and end: "
            + " and ".join(f"{x:.2f}" for x in meta["loadavg_start_end"]))


def target(ok, text, wrong=False):
    """A checked target as (status, text): MISSED also when layerfs gave
    WRONG results, whatever its figure."""
    return ("MET" if ok and not wrong else "MISSED",
            text + (" (wrong results)" if wrong else ""))


def not_measured(text):
    """A target that could not be checked, as (status, text)."""
    return ("n/a", text + ": not measured")


def target_line(status, text):
    """A target's line under Targets: the status in a column of its own."""
    return f"  {status:6s} {text}"


def notes_section(notes):
    """A blank line, Notes: and a line per note; nothing without notes."""
    if not notes:
        return []
    return ["", "Notes:"] + ["  " + n for n in notes]
