"""Job dataclass -> CLI arguments (the jobs' ``to_argv``): one place that turns a job back into a command line."""

from __future__ import annotations

from dataclasses import MISSING, fields


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _ehr_text(record: dict) -> str:
    parts = []
    for key, value in record.items():
        if value is None or value == "":
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if any(c in text for c in ",="):
            raise ValueError(f"EHR value {key}={text!r} cannot be passed as KEY=VALUE")
        parts.append(f"{key}={text}")
    return ",".join(parts)


def job_argv(job, flags: dict, skip: tuple = ()) -> list:
    """Flags for every field whose value differs from the field's default.

    ``flags``: field -> flag; a ``(on, off)`` pair for an optional bool; lists repeat the flag;
    bools with one flag are store_true switches. A value the CLI cannot express raises ValueError.
    """
    argv = []
    for f in fields(job):
        if f.name in skip:
            continue
        value = getattr(job, f.name)
        if value == _default(f) and f.name != "out":  # --out is required by the CLI
            continue
        if f.name not in flags:
            raise ValueError(f"{type(job).__name__}.{f.name}={value!r} has no CLI flag")
        flag = flags[f.name]
        if isinstance(flag, tuple):
            if value is not None:
                argv.append(flag[0] if value else flag[1])
        elif isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        elif value is None:
            raise ValueError(f"{type(job).__name__}.{f.name}=None cannot be given on the command line")
        elif isinstance(value, dict):
            text = _ehr_text(value)
            if text:
                argv += [flag, text]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
