"""The ``facedistill`` command: thin Typer layer over the library (see facedistill/<concern>/)."""

from __future__ import annotations

import typer

from facedistill import __version__
from facedistill.cli.common import reflow_help, route_warnings
from facedistill.cli.prepare import prepare_app

app = typer.Typer(
    name="facedistill",
    help="Distill a face-recognition teacher into a small student and ship it to edge boxes.\n\n"
         "Pipeline: prepare -> distill -> evaluate -> export -> benchmark.\n\n"
         "Example: facedistill quickstart",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(prepare_app, name="prepare")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facedistill {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Distill a face-recognition teacher into a small student and ship it to edge boxes."""
    route_warnings()


def _register() -> None:
    # Subcommands live in their own modules; importing one registers its command on ``app``.
    import importlib
    import importlib.util

    for name in ("distill", "evaluate", "export", "benchmark", "quickstart"):
        module = f"facedistill.cli.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def _reflow_helps() -> None:
    # Every command's help is reflowed once here, so no module has to hand-join its docstring.
    import inspect

    for typer_app in [app] + [group.typer_instance for group in app.registered_groups]:
        for info in typer_app.registered_commands:
            info.help = reflow_help(info.help or (inspect.getdoc(info.callback) if info.callback else None))


_register()
_reflow_helps()
