"""The ``latentguard`` console command: one entry point, one subcommand per module CLI.

``latentguard [--debug] COMMAND ARGS``: ``--debug`` is passed on to the command, which then
shows the traceback of an input error instead of one ``error: ...`` line (exit code 2).
"""

from __future__ import annotations

import runpy
import sys

from guard.errors import unknown_name

COMMANDS = {
    "check": ("experiments.subject", "load the embedded subject offline and check it"),
    "saes": ("experiments.saes", "build or evaluate the project's SAEs"),
    "utility": ("experiments.utility", "utility cost of every registered defense"),
    "bench": ("experiments.bench.recovery", "recovery engine vs reference-style loop, side by side"),
    "bench-suffix": ("experiments.bench.suffix", "embedding-threat attack with vs without the cached prompt prefix"),
    "bench-gcg": ("experiments.bench.gcg", "our token attack vs nanoGCG on the undefended subject"),
    "bench-scaling": ("experiments.bench.scaling", "attack cost against prompt length, clamped latents and sites"),
    "certify": ("certify", "adaptive evaluation of defenses with reports"),
    "reproduce": ("experiments.reproduce", "reproduce the paper's settings on the subject"),
    "judges": ("experiments.judges", "evaluate the refusal judges on labelled data"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    argv = argv[1:] if debug else argv
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<13} {help_}  (python -m {mod})" for name, (mod, help_) in COMMANDS.items())
        print(f"usage: latentguard [--debug] COMMAND [ARGS]\n\ncommands:\n{lines}")
        if argv and argv[0] in ("-h", "--help"):
            sys.exit(0)
        if argv:
            print(f"error: {unknown_name('command', argv[0], COMMANDS, 'latentguard')}", file=sys.stderr)
        sys.exit(2)
    module = COMMANDS[argv[0]][0]
    # "check" is the subject module's own subcommand name.
    sys.argv = [f"latentguard {argv[0]}", *(["check"] if argv[0] == "check" else []), *argv[1:],
                *(["--debug"] if debug else [])]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
