"""Progress of long commands (the reproduction, sweeps, benchmarks): a bar with the rate and the
time left where stderr is a terminal (tqdm), nothing where it is not (logs, CI); on resume, one line
that says what is already done."""

import sys

from tqdm import tqdm


def bar(total, what, done=0, unit="run"):
    """A tqdm bar over ``total`` units of ``what``, of which ``done`` finished in an earlier call (a
    resumed command: said once on stderr, and the bar starts there). Call ``.update()`` after each
    unit and ``.close()`` at the end; a total that grows on the way takes ``.total += n``."""
    if done:
        print(f"{what}: {done} of {total} {unit}s already done, resuming", file=sys.stderr, flush=True)
    return tqdm(total=total, initial=done, desc=what, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not sys.stderr.isatty())
