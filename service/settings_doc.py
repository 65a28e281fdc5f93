"""Generate ``docs/configuration.md`` from the settings model: every key with its type, default,
environment variable and meaning.

    python -m service.settings_doc            # rewrite docs/configuration.md
    python -m service.settings_doc --check    # exit 1 when the file differs (what the test does)

A key's meaning is its ``Field(description=…)`` when it has one, else the comments written
next to it in the model's source: the comment lines right above the key and the comment at the
end of its line. So a new key is documented by the comment it gets anyway, and
``tests/test_settings_doc.py`` fails when a key has neither or the file is stale.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from service.settings import ENV_PREFIX, Settings

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "python -m service.settings_doc"

HEADER = f"""\
# Configuration reference

<!-- Generated from the settings model (service/settings.py and the sections it takes from
feeds/) by `{REGENERATE}`; do not edit by hand: tests/test_settings_doc.py fails when this
file and the model differ. -->

Settings come from, lowest first: the defaults below (also shipped as
`service/defaults/livechain.toml`), the TOML file named by `--config` or `LIVECHAIN_CONFIG`,
then the environment: `LIVECHAIN_<SECTION>__<KEY>` (two underscores between section and key,
case-insensitive). Lists are JSON in the environment (`LIVECHAIN_INSTRUMENTS__UNDERLYINGS='["NIFTY","BANKNIFTY"]'`),
times are `HH:MM[:SS]` (IST), booleans `true`/`false`. A relative path in a TOML file is
relative to that file's directory. An unknown key or a bad value stops startup (exit 2) naming
the key and its variable. Units are in the names: `_s` seconds, `_bytes` bytes.

Broker credentials are not settings: they are read only from the environment (see the last
section) and never logged.
"""

CREDENTIALS = """\
## Credentials (environment only)

| Variable | Meaning |
|---|---|
| `DHAN_CLIENT_ID` | Dhan client id; required with `feed.kind = "dhan"` |
| `DHAN_ACCESS_TOKEN` | Dhan access token, unless `feed.token_file` or `feed.token_command` supplies it; read again at every connect |
| `KITE_API_KEY` | Kite Connect API key; required with `feed.kind = "kite"` |
| `KITE_ACCESS_TOKEN` | Kite access token (expires daily), unless `feed.token_file` or `feed.token_command` supplies it; read again at every connect and after an HTTP 403 |
| `LIVECHAIN_CONFIG` | the TOML settings file (as `--config`); unset: the packaged defaults |
"""


# --------------------------------------------------------------------------- comments


@cache
def _comments(cls: type) -> dict[str, str]:
    """{field name: its comments} from the source of the class that declares it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = _clean(tok.string)
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        n = node.lineno - 2  # the line above, 0-based
        while n >= 0 and lines[n].strip().startswith("#") and not lines[n].strip().startswith("# ---"):
            above.insert(0, _clean(lines[n].strip()))
            n -= 1
        parts = [*above, *([trailing[node.lineno]] if node.lineno in trailing else [])]
        text = " ".join(p for p in parts if p)
        if text:
            out[node.target.id] = text
    return out


def _clean(comment: str) -> str:
    text = comment.lstrip("#").strip()
    for marker in ("fmt: skip", "noqa"):
        if marker in text:
            text = text[: text.index(marker)].rstrip(" :-")
    return text


def meaning(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.description:
        return field.description
    for cls in model.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            comments = _comments(cls)
            if name in comments:
                return comments[name]
            # One comment above a group of keys names the others: point to it.
            for other, text in comments.items():
                if re.search(rf"\b{re.escape(name)}\b", text):
                    return f"See `{other}`."
            return ""
    return ""


# --------------------------------------------------------------------------- types and defaults


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(_type(a) for a in args)
        return text + (" (optional)" if len(args) < len(get_args(annotation)) else "")
    if origin is Literal:
        return " | ".join(json.dumps(v) for v in get_args(annotation))
    if origin is tuple:
        return f"list of {_type(get_args(annotation)[0])}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(json.dumps(m.value) for m in annotation)
    return {
        str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret string",
        dt.time: "time (HH:MM, IST)", dt.date: "date (YYYY-MM-DD)",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    signs = {annotated_types.Gt: ">", annotated_types.Ge: "≥", annotated_types.Lt: "<", annotated_types.Le: "≤"}
    out = []
    for m in field.metadata:
        for kind, sign in signs.items():
            if isinstance(m, kind):
                bound = next(iter(vars(m).values())) if hasattr(m, "__dict__") else getattr(m, m.__slots__[0])
                out.append(f"{sign} {bound:g}" if isinstance(bound, float) else f"{sign} {bound}")
        if isinstance(m, annotated_types.MinLen):
            out.append(f"length ≥ {m.min_length}")
    return ", ".join(out)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()  # a default is public: no secret is ever a default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dt.time):
        return f"`{value.strftime('%H:%M:%S' if value.second else '%H:%M')}`"
    if isinstance(value, tuple):
        return f"`{json.dumps(list(value))}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        return f"`{json.dumps(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- the document


def sections() -> list[tuple[str, type[BaseModel]]]:
    return [(name, f.annotation) for name, f in Settings.model_fields.items()]  # type: ignore[misc]


def undocumented() -> list[str]:
    """Keys with neither a description nor a comment."""
    return [f"{s}.{k}" for s, model in sections() for k in model.model_fields if not meaning(model, k)]


def render() -> str:
    out = [HEADER]
    for section, model in sections():
        out.append(f"## `[{section}]`\n")
        doc = inspect.getdoc(model)
        if doc and model.__module__ != "pydantic.main":
            out.append(doc.split("\n\n")[0].replace("\n", " ").replace("``", "`") + "\n")
        out.append("| Key | Type | Default | Environment variable | Meaning |")
        out.append("|---|---|---|---|---|")
        for key, field in model.model_fields.items():
            kind = _type(field.annotation)
            bounds = _bounds(field)
            if bounds:
                kind += f", {bounds}"
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            out.append(
                f"| `{key}` | {_escape(kind)} | {_escape(_default(field.get_default(call_default_factory=True)))} "
                f"| `{env}` | {_escape(meaning(model, key))} |"
            )
        out.append("")
    out.append(CREDENTIALS)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.settings_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    parser.add_argument("--out", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
