"""The `cilbench` command line: the typer application and where each command lives.

Every command imports what it needs when it runs, so `--help` and argument errors import no torch.
"""

from __future__ import annotations

import typer

from cilbench.cli.data_commands import data_app
from cilbench.cli.grid_commands import leaderboard_app, sweep_command
from cilbench.cli.registry_commands import ls_command, profile_command, recipes_command
from cilbench.cli.run_command import run_command

app = typer.Typer(
    help="Class-incremental learning benchmarks on pre-trained models.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("sweep")(sweep_command)
app.command("ls")(ls_command)
app.command("recipes")(recipes_command)
app.command("profile")(profile_command)
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(data_app, name="data")

if __name__ == "__main__":
    app()
