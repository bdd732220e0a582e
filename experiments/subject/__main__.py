"""``python -m experiments.subject check``"""

from __future__ import annotations

import argparse
import json

from experiments.subject.check import run_check


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.subject")
    parser.add_argument("command", choices=["check"], help="load the embedded subject offline and check it")
    parser.parse_args(argv)
    print(json.dumps(run_check()))


if __name__ == "__main__":
    main()
