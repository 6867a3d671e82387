"""The recipes' ``HfArgumentParser``: ``--help`` lists the flags grouped by what they are for (the
data, the models and the method, evaluation, the Hub, then the rest of transformers'
``TrainingArguments``), each group's own flags first, under a line pointing at docs/flags.md; and
no help text can break argparse's ``%`` formatting."""

from __future__ import annotations

import copy
import dataclasses
import re
from argparse import SUPPRESS, ArgumentDefaultsHelpFormatter
from typing import get_type_hints

from transformers import HfArgumentParser, TrainingArguments

DATA = "the data"
EVALUATION = "evaluation: the robustness report"
HUB = "the Hub: the pushed student and its card"
TRAINING = "training: transformers' TrainingArguments"
LAST = (EVALUATION, HUB, TRAINING)
"""Groups that close the help in this order; the data opens it, every other group comes between."""

TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))
DOCS_LINE = ("Every flag, its default and why: docs/flags.md. --config FILE.yaml reads flags from a file "
             "(recipes/configs/); a flag on the command line overrides it.")

_FORMAT_DIRECTIVE = re.compile(r"%%|%\(\w+\)[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]|%")


def escape_percent(text: str) -> str:
    """``text`` as argparse formats help: a ``%`` that is no format directive (``%(default)s``,
    ``%%``) becomes ``%%``, so "10% of train" prints as written instead of raising."""
    return _FORMAT_DIRECTIVE.sub(lambda m: "%%" if m.group(0) == "%" else m.group(0), text)


def flag_group(dtype: type, name: str) -> str:
    """The help group of field ``name`` of ``dtype``: a ``_flag_groups`` entry of the dataclass,
    else transformers' Hub and training groups for ``TrainingArguments``' own fields, else the
    dataclass's ``_argument_group_name`` (``HfArgumentParser``'s convention) or its name."""
    own = getattr(dtype, "_flag_groups", {})
    if name in own:
        return own[name]
    if issubclass(dtype, TrainingArguments) and name in TRAINING_FIELDS:
        return HUB if name == "push_to_hub" or name.startswith("hub_") else TRAINING
    return getattr(dtype, "_argument_group_name", dtype.__name__)


def _group_rank(title: str, first_seen: int) -> tuple[int, int]:
    if title == DATA:
        return (0, 0)
    if title in LAST:
        return (2, LAST.index(title))
    return (1, first_seen)


class RecipeArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose flags sit in help groups by ``flag_group``; it parses exactly as
    ``HfArgumentParser`` does (groups only change how ``--help`` reads)."""

    def __init__(self, dataclass_types, description: str | None = None):
        self._pending: dict[str, list[tuple[type, dataclasses.Field]]] = {}
        text = f"{description}\n\n{DOCS_LINE}" if description else DOCS_LINE
        super().__init__(dataclass_types, description=text, formatter_class=_HelpFormatter,
                         usage="%(prog)s [-h] [--config FILE.yaml] [--flag value ...]")
        self.add_argument("--config", metavar="FILE.yaml", default=SUPPRESS,
                          help="Flags from a YAML file of flag: value lines.")
        order = sorted(self._pending, key=lambda title: _group_rank(title, list(self._pending).index(title)))
        for title in order:
            group = self.add_argument_group(title)
            for _, field in self._pending[title]:
                self._parse_dataclass_field(group, field)
        for action in self._actions:
            if action.option_strings[:1] == [f"--no_{action.dest}"]:
                action.help = f"Turns --{action.dest} off."
            if action.help:
                action.help = escape_percent(action.help)

    def _add_dataclass_arguments(self, dtype: type) -> None:
        """Called by ``HfArgumentParser.__init__`` for each dataclass: the fields are only sorted
        into their groups here, and added group by group once all are known."""
        hints = get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            if field.init:
                field.type = hints[field.name]
                self._pending.setdefault(flag_group(dtype, field.name), []).append((dtype, field))


class _HelpFormatter(ArgumentDefaultsHelpFormatter):
    """Defaults shown (as ``HfArgumentParser`` shows them), one spelling of each flag and alias (the
    ``--with-dashes`` twins parse all the same), the description's paragraphs kept."""

    def _format_action_invocation(self, action):
        if len(action.option_strings) > 1 and all(o.startswith("--") for o in action.option_strings):
            action = copy.copy(action)
            action.option_strings = [o for o in action.option_strings if "-" not in o[2:]] or action.option_strings[:1]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        if action.option_strings[:1] == [f"--no_{action.dest}"]:  # its default is the flag's, shown there
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return "\n\n".join(super(_HelpFormatter, self)._fill_text(p, width, indent) for p in text.split("\n\n"))
