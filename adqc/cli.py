"""The `adqc` command line: the composition root that mounts every package's commands.

Each package contributes a module with ``register(app, groups)``; groups are the shared
sub-command namespaces (``adqc bench ...``, ``adqc product ...`` and so on).
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: tuple[str, ...] = (
    "ingest.cli",
    "deploy.cli",
    "pretrain.cli",
    "benchmarks.cli",
    "evaluation.cli",
    "inference.cli",
    "benchmarks.stages_cli",
    "adqc.demo_cli",
    "benchmarks.peer.cli",
)

GROUPS = {
    "bench": "Benchmarks whose results go to docs/.",
    "product": "Onboard and manage products (references + calibrated thresholds).",
    "export": "Export models (Triton model repository, TorchScript, ONNX).",
    "camera": "Camera simulators that publish frames to Kafka.",
    "alarms": "Alarm subscribers (the way an MES consumes alarms).",
}


def build_app() -> typer.Typer:
    """Create the root Typer app with every package's commands mounted."""
    app = typer.Typer(
        name="adqc",
        help="adqc: streaming visual quality control with ADPretrain anomaly representations.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app, groups)
    for name, group in groups.items():
        if group.registered_commands:
            app.add_typer(group, name=name)
    return app


def main() -> None:
    """Console-script entry point."""
    build_app()()
