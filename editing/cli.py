"""What every command-line tool of the toolkit shares: exit codes, one-line errors, YAML config files,
atomic JSON output."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable

import yaml

from editing.core.errors import UserError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
MAX_CONFIG_BYTES = 1 << 20  # a config holds a few dozen options; a bigger file is not one


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (`error: ...`) and exit code 2."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv, reading defaults from the YAML file named by --config; flags given override the file.

    The file may give required options, and a flag that can be repeated replaces the file's list."""
    argv = sys.argv[1:] if argv is None else list(argv)
    required = [a for a in parser._actions if a.required]
    for action in required:  # the first pass only looks for --config: the file may give required options
        action.required = False
    try:
        config = getattr(parser.parse_args(argv), "config", None)
    finally:
        for action in required:
            action.required = True
    if not config:
        return parser.parse_args(argv)
    path = Path(config)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_bytes()[:MAX_CONFIG_BYTES + 1].decode("utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}; check it is a readable file") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file (UTF-8 YAML); give a YAML file of options") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; a config holds a few options")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not valid YAML: {first}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of option names to values")
    known = {a.dest for a in parser._actions}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
    actions = {a.dest: a for a in parser._actions}
    values = {k: config_value(path, actions[k], v) for k, v in values.items()}
    lists = {}
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # the file gives it
            if isinstance(action, argparse._AppendAction):  # flags must replace the list, not extend it
                value = values.pop(action.dest)
                lists[action.dest] = list(value) if isinstance(value, (list, tuple)) else [value]
                action.default = None
    parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for dest, value in lists.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    return args


def config_value(path: Path, action: argparse.Action, value):
    """A config file's value for one option, checked against the option's type and choices (the error names
    the key and what it takes)."""
    key = action.dest
    if value is None:
        return None
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise UserError(f"{path}: {key} is a switch: give true or false, got {value!r}")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    typed = action.type is not None or action.choices is not None
    if isinstance(value, dict) or (isinstance(value, list) and not many and typed):
        raise UserError(f"{path}: {key} takes {_expected(action)}, got {value!r}")
    if isinstance(value, list) and not many:  # e.g. crop: [0, 0, 10, 0]; the request parses such lists
        return value
    if many:
        return [_config_item(path, action, v) for v in (value if isinstance(value, list) else [value])]
    return _config_item(path, action, value)


def number_or_auto(text: str) -> float | str:
    """An option's value that is a number or the word auto (--guidance, --depth): "auto" as it is, else a float."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"takes a number or auto, got {text!r}") from None


number_or_auto.expected = "a number or auto"  # what a config file's error says the option takes


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    return getattr(action.type, "expected", None) or {int: "a whole number", float: "a number"}.get(
        action.type, "a text value")


def _config_item(path: Path, action: argparse.Action, value):
    key = action.dest
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and action.type in (int, float)):
        raise UserError(f"{path}: {key} takes {_expected(action)}, got {value!r}")
    if action.type is int and not isinstance(value, int):
        if isinstance(value, float) or not str(value).strip().lstrip("+-").isdigit():
            raise UserError(f"{path}: {key} takes {_expected(action)}, got {value!r}")
        value = int(value)
    elif action.type is float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{path}: {key} takes {_expected(action)}, got {value!r}") from None
    elif callable(action.type) and isinstance(value, str):
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UserError(f"{path}: {key}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{path}: {key} takes {_expected(action)}, got {value!r}")
    return value


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command: UserError -> exit 2, any other failure -> exit 1, each as one `error:` line
    (the traceback only with --debug)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return main(argv)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # a failure inside the run: report it in one line, not as a traceback
        if debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
