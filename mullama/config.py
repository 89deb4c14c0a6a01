"""Typed command configs: dataclasses loadable from YAML, every field overridable on the command line.

A command is declared once as a dataclass; `command()` turns it into a typer command whose options
are the dataclass fields plus `--config FILE`. Precedence: field default < YAML file < command line.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
import yaml

from mullama.errors import MullamaError
from mullama.hub_ids import hub_ids, hub_kind

C = TypeVar("C")
REQUIRED = dataclasses.MISSING
HUB_HELP = {"model": "; or a Hugging Face Hub id, ORG/NAME[@REVISION]",
            "file": "; or a file of a Hugging Face Hub repo, ORG/NAME[@REVISION]:PATH"}
Rule = Callable[[Any], "str | None"]  # a value -> why it is wrong, or None when it is fine


def option(default: Any = REQUIRED, help: str = "", *, argument: bool = False, short: str | None = None,
           check: Rule | None = None) -> Any:
    """A config field with its command-line help and an optional validity rule; `argument=True` makes it
    positional."""
    metadata = {"help": help, "argument": argument, "short": short, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not REQUIRED:
        return field.default
    if field.default_factory is not REQUIRED:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return REQUIRED


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MullamaError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MullamaError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MullamaError(f"config file {path} must hold a mapping of option names to values")
    return data


def build_config(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Instantiate `cls` from a mapping, with clear errors for unknown or missing fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    normalised = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(normalised) - set(fields))
    if unknown:
        raise MullamaError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in normalised and _default_of(f) is REQUIRED]
    if missing:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in missing)
        raise MullamaError(f"missing required option(s) {flags} (give them on the command line or in --config)")
    for name, value in list(normalised.items()):
        kind = _field_type(cls, fields[name])
        if value is not None and kind in (int, float, str) and not isinstance(value, kind):
            try:
                normalised[name] = kind(value)
            except (TypeError, ValueError):
                raise MullamaError(f"{source}: option {name} must be {kind.__name__}, got {value!r}") from None
    config = cls(**normalised)
    validate(config)
    return config


def validate(config: Any) -> None:
    """Check every field against its rule before any work starts: one line naming the option and what to do."""
    for field in dataclasses.fields(config):
        rule = field.metadata.get("check")
        value = getattr(config, field.name)
        problem = rule(value) if rule is not None else None
        if problem:
            name = field.name.upper() if field.metadata.get("argument") else "--" + field.name.replace("_", "-")
            raise MullamaError(f"{name} {value!r}: {problem}")


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a finite number"
    return None


def at_least(low: float) -> Rule:
    return lambda value: _number(value) or (f"must be at least {low}" if value < low else None)


def greater_than(low: float) -> Rule:
    return lambda value: _number(value) or (f"must be greater than {low}" if value <= low else None)


def between(low: float, high: float) -> Rule:
    """low <= value < high."""
    return lambda value: _number(value) or (None if low <= value < high else f"must be in [{low}, {high})")


def probability_mass(value: Any) -> str | None:
    """0 < value <= 1 (a top-p)."""
    return greater_than(0)(value) or (None if value <= 1 else "must be at most 1")


def one_of(*choices: Any) -> Rule:
    return lambda value: None if value in choices else f"must be one of {', '.join(map(str, choices))}"


def either(*rules: Rule) -> Rule:
    """Fine when any rule accepts the value (e.g. -1 for 'automatic', else a positive number)."""
    def check(value: Any) -> str | None:
        problems = [rule(value) for rule in rules]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    return check


def path_given(value: Any) -> str | None:
    """A required path: an empty one would silently mean the current directory."""
    return "must name a path, not be empty" if isinstance(value, str) and not value.strip() else None


def folder_out(value: Any) -> str | None:
    """A folder to write into: given, and not an existing file (the writers would fail halfway with a traceback)."""
    return path_given(value) or ("is a file; give a folder to write into" if Path(str(value)).is_file() else None)


def non_empty(value: Any) -> str | None:
    """A required text (a question): blank would ask nothing."""
    return "must not be empty" if isinstance(value, str) and not value.strip() else None


def files_given(value: Any) -> str | None:
    """A required list of files (given once or more on the command line)."""
    return "give at least one file" if not value or any(not str(v).strip() for v in value) else None


def simple_name(value: Any) -> str | None:
    """A name that is also a safe folder name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        return "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def device_name(value: Any) -> str | None:
    """auto, cpu, cuda or cuda:N: a typo fails here, not after a store or run folder was created."""
    if value in ("auto", "cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:")
                                            and value[5:].isdecimal()):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def _describe(help_text: str, default: Any) -> str:
    if default is REQUIRED:
        return f"{help_text} (required)"
    if default in (None, "", []):
        return help_text
    shown = str(default).lower() if isinstance(default, bool) else default
    return f"{help_text} (default: {shown})"


def _cli_parameter(cls: type, field: dataclasses.Field) -> inspect.Parameter:
    """A typer parameter whose default is None, so that only options actually given override the YAML."""
    kind = _field_type(cls, field)
    default = _default_of(field)
    help_text = _describe(field.metadata.get("help", "") + HUB_HELP.get(hub_kind(field.name), ""), default)
    flag = "--" + field.name.replace("_", "-")
    if field.metadata.get("argument"):
        info = typer.Argument(None, help=help_text, show_default=False, metavar=field.name.upper())
        annotation = Optional[kind]
    elif typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        info = typer.Option(None, flag, help=help_text + "; repeatable", show_default=False, metavar="VALUE")
        annotation = Optional[list[item]]  # type: ignore[valid-type]
    elif kind is bool:
        info = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
        annotation = Optional[bool]
    else:
        names = [flag] + ([field.metadata["short"]] if field.metadata.get("short") else [])
        info = typer.Option(None, *names, help=help_text, show_default=False, metavar=kind.__name__.upper())
        annotation = Optional[kind]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def command(app: typer.Typer, name: str, cls: type[C], help: str,
            config_argument: bool = False) -> Callable[[Callable[[C], Any]], Callable[[C], Any]]:
    """Register `run(config)` as command `name` whose options are the fields of dataclass `cls`.

    The YAML file is `--config FILE`, or the first positional argument with `config_argument`
    (`mullama train run.yaml`).
    """

    def register(run: Callable[[C], Any]) -> Callable[[C], Any]:
        params = [_cli_parameter(cls, f) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        config_help = "YAML file of option values; command-line options win."
        config_info = (typer.Argument(None, help=config_help, metavar="CONFIG.yaml", show_default=False)
                       if config_argument else typer.Option(None, "--config", help=config_help))
        config_param = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=config_info,
                                         annotation=Optional[Path])
        if config_argument:
            params.insert(0, config_param)
        else:
            params.append(config_param)

        def entry(**kwargs: Any) -> Any:
            config_file = kwargs.pop("config")
            values = load_yaml(config_file) if config_file else {}
            source = str(config_file) if config_file else "command line"
            values.update({k: v for k, v in kwargs.items() if v is not None and v != []})
            config = build_config(cls, values, source)
            if not hub_ids(config):
                return run(config)
            from mullama.hub import resolving_hub_ids  # only now: huggingface_hub would slow every --help

            with resolving_hub_ids(config, hub_ids(config)):
                return run(config)

        entry.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        entry.__annotations__ = {p.name: p.annotation for p in params}
        entry.__name__ = run.__name__
        entry.__doc__ = help
        app.command(name, help=help)(entry)
        return run

    return register
