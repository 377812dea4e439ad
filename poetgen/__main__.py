"""The `poetgen` command (the console script and `python -m poetgen`): a SIGINT that comes while the
commands load (a second or so: Typer, the command modules) is held and answered once they have loaded,
as any other: one line, exit 130, never a traceback."""

import signal


def main() -> None:
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    from .cli import main as run_cli  # the commands: Typer and their modules

    run_cli(interrupted=lambda: bool(held))


if __name__ == "__main__":
    main()
