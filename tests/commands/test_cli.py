"""The command line itself: version, help text for every command, no heavy imports for --help."""
import subprocess
import sys

from click.testing import CliRunner

from jetcap import __version__
from jetcap.cli import COMMANDS, cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_listed_command_has_help_text():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = cli.list_commands(None)
    assert {"export", "validate", "build", "caption", "predict"} <= set(listed)
    for name in listed:
        assert name in result.output
        command = cli.get_command(None, name)
        assert command.help and len(command.help.strip()) > 20, name
        sub = CliRunner().invoke(cli, [name, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output, name


def test_only_shipped_commands_are_listed():
    import importlib

    for name, module in COMMANDS:
        try:
            importlib.import_module("jetcap.commands." + module)
        except ModuleNotFoundError:
            assert name not in cli.list_commands(None)


def test_help_in_a_fresh_interpreter_imports_no_heavy_package():
    code = ("import sys\nfrom jetcap.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "for name in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'torchvision'):\n"
            "    assert name not in sys.modules, name\n"
            "print('clean')\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("clean")


def test_user_errors_have_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jetcap", "validate", str(tmp_path / "missing")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "Error:" in out.stderr


def test_json_output_stays_json_when_a_command_fails(tmp_path):
    """Every command with --json prints the error as JSON on stdout (one document), exit code and
    one-line message as without it."""
    import json

    missing = str(tmp_path / "missing")
    runner = CliRunner()
    for args in (["validate", missing], ["check", missing], ["caption", missing, "x.png"],
                 ["predict", missing, "x.npy"], ["bench", missing], ["triton-repo", missing, str(tmp_path / "r")],
                 ["build", missing]):
        if args[0] not in COMMANDS:
            continue
        result = runner.invoke(cli, args + ["--json"])
        assert result.exit_code == 2, (args, result.output)
        reply = json.loads(result.stdout)
        assert reply["exit_code"] == 2 and "not found" in reply["error"], (args, reply)
