"""Build hvdspar's native kernels against the installed TensorFlow: python -m hvdspar.native [--if-stale]."""

import argparse
import subprocess
import sys

from hvdspar.native import LIBRARY, build, is_current


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hvdspar.native", description=__doc__)
    parser.add_argument("--if-stale", action="store_true", help="build only if the library is missing or stale")
    parser.add_argument("--cxx", help="the C++ compiler (default $CXX or g++)")
    args = parser.parse_args(argv)
    if args.if_stale and is_current():
        print(f"{LIBRARY} is up to date")
        return 0
    try:
        build(args.cxx)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        detail = getattr(err, "stderr", None) or str(err)
        print(f"hvdspar.native: building {LIBRARY.name} failed:\n{detail}", file=sys.stderr)
        return 1
    print(f"built {LIBRARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
