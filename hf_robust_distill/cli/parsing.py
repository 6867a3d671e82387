"""A recipe's flags: ``HfArgumentParser`` on top of ``--config file.yaml`` and the method's and
the demo's defaults; unknown keys and bad values listed under their flags."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import yaml
from ..utils.problems import Problems, did_you_mean
from .recipe_parser import RecipeArgumentParser


def parse_recipe_args(dataclass_types, argv: list[str] | None = None, defaults: dict | None = None,
                      demo_defaults: dict | None = None, demo_unless: str = "teacher_name_or_path",
                      problems: Problems | None = None, description: str | None = None):
    """Flags parsed into ``dataclass_types``, on top of ``--config file.yaml`` and ``defaults``.
    Without ``--<demo_unless>`` (on the line or in the YAML) the embedded demo's settings are the
    defaults too; any flag still overrides them. ``description`` opens ``--help``, whose defaults
    are the method's (not the demo's).

    Unknown YAML keys and flags, and values a dataclass rejects, are added to ``problems`` (each
    dataclass that fails is returned as ``None``); without ``problems`` they are raised together."""
    own = problems if problems is not None else Problems()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = RecipeArgumentParser(dataclass_types, description)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    from_yaml = {}
    if "--config" in argv:
        at = argv.index("--config")
        path = argv[at + 1] if at + 1 < len(argv) else None
        del argv[at : at + 2]
        from_yaml = own.check("--config", _read_yaml, path, actions) or {}
    asks_help = "-h" in argv or "--help" in argv  # the help shows the method's defaults, not the demo's
    demo = f"--{demo_unless}" not in argv and not from_yaml.get(demo_unless) and not asks_help
    parser.set_defaults(**{**(defaults or {}), **((demo_defaults or {}) if demo else {}), **from_yaml})
    parser.exit_on_error = False
    try:
        namespace, remaining = parser.parse_known_args(args=argv)
    except argparse.ArgumentError as error:
        own.add(f"--{error.argument_name.lstrip('-')}" if error.argument_name else "flags", error.message)
        own.raise_if_any()
    after_a_flag = False  # a value after an unknown flag is that flag's
    for token in remaining:
        if token.startswith("--"):
            name = token[2:].split("=")[0]
            own.add(f"--{name}", f"unknown flag{did_you_mean(name, actions)}")
            after_a_flag = True
        elif not after_a_flag:
            own.add(repr(token), "a value without a flag")
    outputs = []
    for dtype in dataclass_types:
        inputs = {f.name: getattr(namespace, f.name) for f in fields(dtype) if f.init and hasattr(namespace, f.name)}
        if hasattr(dtype, "runnable_here"):
            inputs = dtype.runnable_here(inputs, own)
        outputs.append(own.check(f"flags of {dtype.__name__}", dtype, **inputs))
    if problems is None:
        own.raise_if_any()
    return outputs


def _read_yaml(path: str | None, actions: dict[str, argparse.Action]) -> dict:
    """A YAML recipe's keys, each a known flag, string values converted as the flag would convert them."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"no file {path!r}")
    with open(path) as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map flag names to values (key: value lines), got a {type(values).__name__}")
    unknown = [k for k in values if k not in actions]
    if unknown:
        raise ValueError("; ".join(f"unknown key {k!r}{did_you_mean(str(k), actions)}" for k in unknown)
                         + f" (in {path})")
    converted = {}
    for key, value in values.items():
        action = actions[key]
        if isinstance(value, str) and action.type not in (None, str):
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: {value!r} is not a valid value (in {path})") from None
        converted[key] = value
    return converted
