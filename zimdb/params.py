"""params.yaml: its schema, and validation before any stage does work.

Every key of the file is declared here with its type and range, so a typo, a missing key or a
value out of range fails fast with the key named, instead of deep inside a stage.
"""

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from zimdb.errors import PipelineError

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class Field:
    kind: type
    lo: float | None = None  # inclusive lower bound
    hi: float | None = None  # exclusive upper bound
    gt: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        bounds = [
            f"> {self.gt}" if self.gt is not None else None,
            f">= {self.lo}" if self.lo is not None else None,
            f"< {self.hi}" if self.hi is not None else None,
        ]
        return " ".join([name[self.kind], " and ".join(b for b in bounds if b)]).strip()

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) != (self.kind is bool):
            return False  # bool is an int subclass in Python; `epochs: true` is a mistake
        if self.kind is float:
            if not isinstance(value, int | float):
                return False
        elif not isinstance(value, self.kind):
            return False
        if self.choices and value not in self.choices:
            return False
        if self.lo is not None and value < self.lo:
            return False
        if self.gt is not None and value <= self.gt:
            return False
        return self.hi is None or value < self.hi


def choice(*options: str) -> Field:
    return Field(str, choices=options)


DEVICE = choice("auto", "cpu", "cuda")

SCHEMA: dict[str, dict[str, Field]] = {
    "download": {
        "source": choice("modelscope", "aclimdb"),
        "dataset": Field(str),
        "archive": Field(str),
        "limit": Field(int, lo=0),
    },
    "split": {
        "val_fraction": Field(float, gt=0, hi=1),
        "seed": Field(int, lo=0),
        "group_by": choice("review", "movie"),
    },
    "vocab": {
        "size": Field(int, lo=3),  # PAD, UNK and at least one word
    },
    "encode": {
        "max_len": Field(int, lo=1),
        "truncate": choice("head", "tail"),
    },
    "train": {
        "embedding_dim": Field(int, lo=1),
        "hidden_dim": Field(int, lo=1),
        "num_layers": Field(int, lo=1),
        "bidirectional": Field(bool),
        "pooling": choice("last", "max"),
        "dropout": Field(float, lo=0, hi=1),
        "forget_bias": Field(float),
        "word_dropout": Field(float, lo=0, hi=1),
        "epochs": Field(int, lo=1),
        "batch_size": Field(int, lo=1),
        "lr": Field(float, gt=0),
        "lr_schedule": choice("constant", "cosine"),
        "grad_accum_steps": Field(int, lo=1),
        "grad_clip": Field(float, lo=0),
        "amp": Field(bool),
        "grad_checkpointing": Field(bool),
        "device": DEVICE,
        "seed": Field(int, lo=0),
        "nproc_per_node": Field(int, lo=1),
    },
    "evaluate": {
        "batch_size": Field(int, lo=1),
        "device": DEVICE,
    },
}


def validate(params: Any, source: Path = PARAMS_FILE) -> None:
    if not isinstance(params, dict):
        raise PipelineError(
            f"{source}: expected a mapping of sections, got {type(params).__name__}"
        )
    unknown = sorted(set(params) - set(SCHEMA))
    if unknown:
        raise PipelineError(f"{source}: unknown section {unknown[0]!r}; known: {', '.join(SCHEMA)}")
    for section, fields in SCHEMA.items():
        values = params.get(section)
        if not isinstance(values, dict):
            raise PipelineError(f"{source}: missing section {section!r}")
        for key in sorted(set(values) - set(fields)):
            raise PipelineError(
                f"{source}: unknown key {section}.{key}; known: {', '.join(fields)}"
            )
        for key, field in fields.items():
            if key not in values:
                raise PipelineError(f"{source}: missing key {section}.{key} ({field.describe()})")
            if not field.accepts(values[key]):
                raise PipelineError(
                    f"{source}: {section}.{key} must be {field.describe()}, got {values[key]!r}"
                )


def load(section: str, path: Path = PARAMS_FILE) -> SimpleNamespace:
    """The validated `section` of params.yaml; the whole file is checked first."""
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    validate(params, path)
    values = params[section]
    fields = SCHEMA[section]
    return SimpleNamespace(
        **{k: float(v) if fields[k].kind is float else v for k, v in values.items()}
    )
