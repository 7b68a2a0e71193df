"""Command-line overrides for a config dict, nanoGPT style: ``--key=value`` and ``--preset=NAME``.

Values are parsed to the type of the default (bool, int, float, str); the presets (``--preset=a,b``) are applied
first, then the other overrides in order. ``--help`` prints every key with its default.
"""
from __future__ import annotations

import ast
import difflib
import re


class ConfigError(ValueError):
    """A bad command-line override; the message names the key and what is accepted."""


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(key: str, text: str, default):
    """Parse ``text`` to the type of ``default``. Raises ConfigError naming ``key`` on a bad value."""
    try:
        if isinstance(default, bool):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = "True or False" if isinstance(default, bool) else type(default).__name__
        raise ConfigError(f"--{key}={text}: expected {kind} (default {default!r})") from None
    return text


def parse_config(argv: list[str], config: dict, presets: dict) -> dict:
    """A copy of ``config`` with ``presets[--preset]`` and the ``--key=value`` overrides applied.

    ``--preset=a,b`` applies several presets in order (a later one wins on a shared key). The preset
    argument is stored under ``config["preset"]``.
    Raises:
        ConfigError: malformed argument, unknown key (with the valid keys listed) or unknown preset.
    """
    cfg = dict(config)
    pairs = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"{arg!r}: arguments look like --key=value (e.g. --learning_rate=3e-4); "
                              "run with --help for the keys")
        key, value = arg[2:].split("=", 1)
        pairs.append((key.replace("-", "_"), value))
    for key, value in pairs:
        if key == "preset":
            for name in value.split(","):
                if name not in presets:
                    raise ConfigError(f"--preset={name}: unknown preset; choose one of {', '.join(presets)}")
                cfg.update(presets[name])
            cfg["preset"] = value
    for key, value in pairs:
        if key == "preset":
            continue
        if key not in config:
            close = difflib.get_close_matches(key, config, n=3)
            hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise ConfigError(f"--{key}: unknown config key.{hint}\nValid keys: {', '.join(sorted(config))}")
        cfg[key] = parse_value(key, value, config[key])
    return cfg


def literal_config(source: str, name: str = "CONFIG") -> dict:
    """The dict assigned to ``name`` in Python ``source`` (``NAME = dict(key=literal, ...)`` or a dict
    literal), read without running it: how bench.py takes train.py's defaults without importing the trainer.

    Raises:
        ValueError: no such assignment, or a value that is not a literal.
    """
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "dict" and not value.args:
                return {k.arg: ast.literal_eval(k.value) for k in value.keywords}
            return dict(ast.literal_eval(value))
    raise ValueError(f"no `{name} = dict(...)` assignment found")


def key_comments(source: str) -> dict[str, str]:
    """The one-line ``# comment`` after each ``key=value,`` line of a config dict in Python ``source``."""
    found = (re.match(r"\s+(\w+)=.*?,\s*#\s*(.*)$", line) for line in source.splitlines())
    return {m[1]: m[2] for m in found if m}


def format_help(config: dict, presets: dict, doc: str = "", comments: dict[str, str] | None = None) -> str:
    """Usage text: the module docstring, every key with its default and comment, and the presets."""
    comments = comments or {}
    width = max(len(f"--{k}={v!r}") for k, v in config.items())
    keys = "\n".join(f"  {f'--{k}={v!r}'.ljust(width)}  {comments.get(k, '')}".rstrip() for k, v in config.items())
    sets = "\n".join(f"  --preset={name}: " + ", ".join(f"{k}={v!r}" for k, v in p.items()) for name, p in presets.items())
    return f"{doc.strip()}\n\nConfig keys (edit CONFIG in train.py or override):\n{keys}\n\nPresets:\n{sets}\n"


def explicit_keys(argv: list[str]) -> set[str]:
    """The keys set by ``--key=value`` arguments of ``argv`` (``--preset`` excluded): what the user chose."""
    keys = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--") and "=" in a}
    return keys - {"preset"}
