"""Typed stage configs from the command line: every dataclass field becomes a `--flag`.

Each stage keeps one dataclass config; this turns it into an argparse parser so that any
field can be overridden (`--learning-rate 3e-5`, `--no-tiny-encoder`) without a second
list of options to keep in sync.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--field-name` option per field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        help_text = field.metadata.get("help", "") + f" (default: {default})"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(
                flag, type=caster_of(kind), default=default, help=help_text, choices=choices
            )


def caster_of(kind: Any) -> Any:
    """The argparse `type` of a field's type: dicts as JSON (`--instances '{"ranker": 2}'`),
    `X | None` as X."""
    origin = typing.get_origin(kind)
    if origin is dict:
        return json.loads
    if origin in (typing.Union, types.UnionType):
        return caster_of(next(a for a in typing.get_args(kind) if a is not type(None)))
    return kind


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the dataclass `cls` from parsed arguments (unknown attributes ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    """Parse `argv` into the dataclass `cls`; `--help` lists every field."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config (paths as strings), for reports."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def setup_logging(*packages: str) -> None:
    """INFO logs for shoprank's own packages; libraries stay at WARNING (their INFO is noise)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in packages:
        logging.getLogger(name).setLevel(logging.INFO)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Errors in the user's input (bad data files, wrong options) end a CLI with one line
    on stderr and exit status 2 instead of a traceback; anything else still raises."""
    try:
        yield
    except kinds as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
