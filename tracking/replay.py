"""Deliver a run kept in a spool to an MLflow store (after the server was unreachable).

    python -m hvdspar.tracking.replay <spool dir> [--tracking-uri URI]

The spool dir is the one the warning named (``<checkpoint_dir>/mlflow-spool`` or
``./mlruns-spool/<run>``). Without --tracking-uri the records go to the store the run was
meant for; what that store already has is not sent twice.
"""

import argparse
import sys

from hvdspar.tracking.logger import replay


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hvdspar.tracking.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("spool_dir")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    run_id = replay(args.spool_dir, args.tracking_uri)
    print(f"tracking.replay: run {run_id} is complete in the tracking store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
