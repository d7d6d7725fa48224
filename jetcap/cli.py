"""The ``jetcap`` command line: a thin click layer over the library (Python 3.6).

Each command lives in its own module under ``jetcap/commands`` and only parses options, calls one
library function and prints.  Library errors (:class:`jetcap.errors.JetcapError`) are turned into a
one-line ``click.ClickException`` here, in one place; nothing heavy (torch, onnx, tensorrt) is
imported until a command runs.
"""
import importlib
import sys

import click

from jetcap import __version__
from jetcap.errors import JetcapError

# command name -> module under jetcap.commands defining ``command`` (a click.Command)
COMMANDS = (
    ("export", "export"),
    ("validate", "validate"),
    ("check", "check"),
    ("build", "build"),
    ("caption", "caption"),
    ("caption-stream", "caption_stream"),
    ("predict", "predict"),
    ("serve-engine", "serve_engine"),
    ("triton-repo", "triton_repo"),
    ("serve-triton", "serve_triton"),
    ("bench", "bench"),
    ("samples", "samples"),
)


class JetcapExit(click.ClickException):
    """A JetcapError rendered for the terminal, keeping its exit code."""

    def __init__(self, error):
        super(JetcapExit, self).__init__(str(error))
        self.exit_code = error.exit_code


class LazyGroup(click.Group):
    """A group whose commands are imported only when listed or invoked; missing modules are skipped."""

    def list_commands(self, ctx):
        return [name for name, module in COMMANDS if self._module(module) is not None]

    def get_command(self, ctx, name):
        for command_name, module in COMMANDS:
            if command_name == name:
                loaded = self._module(module)
                return loaded.command if loaded is not None else None
        return None

    @staticmethod
    def _module(module):
        try:
            return importlib.import_module("jetcap.commands." + module)
        except ModuleNotFoundError as exc:
            if exc.name == "jetcap.commands." + module:
                return None  # command not shipped in this build
            raise

    def invoke(self, ctx):
        try:
            return super(LazyGroup, self).invoke(ctx)
        except JetcapError as error:
            raise JetcapExit(error)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jetcap")
def cli():
    """jetcap: take a trained PyTorch captioner or sequence classifier to a Jetson.

    export -> validate -> build -> caption / predict / serve-engine.
    """


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="jetcap")


if __name__ == "__main__":
    sys.exit(main())
