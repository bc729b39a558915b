"""``python -m edgemq.dashboard``: the same as ``edgemq dashboard`` (what `cluster up` supervises)."""

import typer

from edgemq.dashboard.cmd import dashboard

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(dashboard)
app()
