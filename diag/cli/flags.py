"""Config dataclasses as command-line flags: one flag per field, its help text and type from the field.

A config dataclass (:class:`diag.engine.extract.ExtractConfig`, :class:`diag.train.FinetuneConfig`, ...) is
the single source of the names, defaults and help of its options; :func:`add_config_flags` turns each
field into ``--field-name`` and :func:`config_from_args` builds the config back from the parsed
arguments, in the spirit of transformers' ``HfArgumentParser``. The flag's type comes from the field's
annotation (``bool`` → ``--x/--no-x``, ``int`` → an integer, ``float`` → a number, anything else → a
string the config validates). A flag left off the command line is absent from the namespace, so a
config can take layered values: its defaults, then a preset or a config file, then the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, TypeVar

__all__ = ["DiagParser", "add_config_flags", "config_from_args", "flag_values", "with_flag_names"]

_C = TypeVar("_C")
_METAVARS: dict[type, str] = {int: "N", float: "X", str: "VALUE"}


def _flag_type(annotation: Any) -> type:
    """``bool``, ``int``, ``float`` or ``str`` for a field annotation (``X | None`` counts as ``X``).

    A union of several types (``int | str``) is read as a string: the config's own validation parses it.
    """
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    kinds = [a for a in args if a is not type(None)] if args else [annotation]
    if len(kinds) == 1 and kinds[0] in (bool, int, float, str):
        return kinds[0]
    return str


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    *,
    skip: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    metavars: Mapping[str, str] | None = None,
) -> argparse._ArgumentGroup:
    """Add one ``--field-name`` flag per field of dataclass ``cls`` to a new argument group ``title``.

    ``names`` renames flags (by field name, without the dashes: ``{"n_permutations": "permutations"}``);
    the parsed value still lands under the field's name.

    The help text is the field's ``metadata["help"]`` followed by its default (unless the help already
    names one); ``metavars`` (by field name) or ``metadata["metavar"]`` override the metavar. Unset flags
    stay out of the namespace. Fields in ``skip`` get no flag.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + (names or {}).get(f.name, f.name.replace("_", "-"))
        typ = _flag_type(hints[f.name])
        helptext = str(f.metadata.get("help", ""))
        if f.default is not dataclasses.MISSING and "default" not in helptext:
            helptext += f" (default: {f.default})"
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        if typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            metavar = (metavars or {}).get(f.name) or f.metadata.get("metavar", _METAVARS[typ])
            group.add_argument(flag, type=typ, metavar=metavar, **common)
    return group


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given as flags on the command line (those left off are absent)."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}


def config_from_args(cls: type[_C], args: argparse.Namespace, *layers: Mapping[str, Any]) -> _C:
    """``cls`` built from ``layers`` (lowest precedence first: a preset, a config file, ...) and the flags.

    Fields neither a layer nor a flag sets take the dataclass default.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    values.update(flag_values(cls, args))
    return cls(**values)


class DiagParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that can say which flag sets each parsed value.

    Subcommand parsers made with ``add_subparsers().add_parser`` are of this class too, so
    :meth:`flag_names` follows the chosen subcommands.
    """

    def error(self, message: str) -> NoReturn:
        """A usage error as ONE line on stderr (exit 2), like every other diag error: the command, what is
        wrong, and where the help is (argparse would print the whole usage block first)."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} -h`)\n")

    def flag_names(self, args: argparse.Namespace) -> dict[str, str]:
        """``{dest: flag}`` for the options of this parser and of the subcommands chosen in ``args``.

        The flag is the first long one (``--image-size``; ``--cache`` for ``--cache/--no-cache``).
        """
        names: dict[str, str] = {}
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(args, action.dest, None)
                sub = action.choices.get(chosen) if isinstance(chosen, str) else None
                if isinstance(sub, DiagParser):
                    names.update(sub.flag_names(args))
            elif action.option_strings and action.dest not in (argparse.SUPPRESS, "help", "version"):
                long = [o for o in action.option_strings if o.startswith("--")]
                names.setdefault(action.dest, (long or action.option_strings)[0])
        return names


def with_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the Python parameter names of ``flags`` replaced by their flags.

    A name with an underscore (``image_size``) is replaced wherever it stands as a word (not inside a
    path or an existing flag); a plain word (``alpha``) only where it starts the message as the subject
    of a rule (``alpha must be in (0, 1); got 2.0.``), so prose is left alone.
    """
    for dest in sorted(flags, key=len, reverse=True):
        flag = flags[dest]
        if "_" in dest:
            pattern = rf"(?<![\w\-./]){re.escape(dest)}(?![\w\-/]|\.\w)"
        else:
            pattern = rf"^{re.escape(dest)}(?= must\b)"
        message = re.sub(pattern, flag, message)
    return message
