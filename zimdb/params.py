"""params.yaml: its schema as pydantic models, and validation before any stage does work.

Every key of the file is declared here with its type and range, so a typo, a missing key or a
value out of range fails fast with the key named, instead of deep inside a stage. Strict: no
`epochs: true` or `lr: "0.1"` read as numbers; integers are accepted where a float is meant.
"""

import types
import typing
from pathlib import Path
from typing import Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from zimdb.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Label = int | str
Class = Label | list[Label]  # a label, or several (ratings: [1, 2] negative)


class Download(Section):
    source: Literal["modelscope", "aclimdb", "table"]
    dataset: str
    archive: str
    train: str
    test: str
    column_names: list[str] = Field(
        description="a list of column names ([] where the file names them)"
    )
    text_columns: list[str] = Field(min_length=1, description="a list of one or more column names")
    label_column: str
    labels: list[Class] = Field(
        min_length=2,
        max_length=2,
        description="two classes, negative then positive, each a label or a list of labels",
    )
    skip_labels: list[Label] = Field(description="a list of labels ([] for none)")
    limit: int = Field(ge=0)

    @field_validator("labels")
    @classmethod
    def _two_classes(cls, labels: list[Class]) -> list[Class]:
        named = [_names(c) for c in labels]
        if not all(named):
            raise ValueError("a class with no label")
        if set(named[0]) & set(named[1]):
            raise ValueError("the same label in both classes")
        return labels

    @field_validator("text_columns", "column_names")
    @classmethod
    def _once_each(cls, names: list[str]) -> list[str]:
        if len(set(names)) < len(names):
            raise ValueError("a column named twice")
        return names

    def classes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The labels of each class as they are matched: strings, lowercase."""
        negative, positive = (_names(c) for c in self.labels)
        return negative, positive

    def skipped(self) -> tuple[str, ...]:
        return _names(self.skip_labels)


def _names(labels: Class) -> tuple[str, ...]:
    return tuple(str(v).strip().lower() for v in (labels if isinstance(labels, list) else [labels]))


class Split(Section):
    val_fraction: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)
    group_by: Literal["review", "movie"]


class Vocab(Section):
    size: int = Field(ge=3)  # PAD, UNK and at least one word


class Encode(Section):
    max_len: int = Field(ge=1)
    truncate: Literal["head", "tail"]


class Train(Section):
    embedding_dim: int = Field(ge=1)
    hidden_dim: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    pooling: Literal["last", "concat"]
    dropout: float = Field(ge=0, lt=1)
    forget_bias: float
    word_dropout: float = Field(ge=0, lt=1)
    position_loss: float = Field(ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    lr_schedule: Literal["constant", "cosine"]
    grad_accum_steps: int = Field(ge=1)
    grad_clip: float = Field(ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    grad_checkpointing: bool | Literal["auto"]
    device: Device
    seed: int = Field(ge=0)
    nproc_per_node: int = Field(ge=1)


class Evaluate(Section):
    batch_size: int = Field(ge=1)
    device: Device


class Baseline(Section):
    ngram_max: int = Field(ge=1)
    min_df: int = Field(ge=1)
    hash_bits: int = Field(ge=1, le=31)
    sublinear_tf: bool
    alpha: float = Field(gt=0)
    epochs: int = Field(ge=1)


class Params(Section):
    download: Download
    split: Split
    vocab: Vocab
    encode: Encode
    train: Train
    evaluate: Evaluate
    baseline: Baseline


def describe(field: FieldInfo) -> str:
    """What a field accepts, in the words of the error messages."""
    if field.description:
        return field.description
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):  # bool | Literal
        values = [
            repr(v) if typing.get_origin(kind) is Literal else str(v).lower()
            for kind in typing.get_args(field.annotation)
            for v in (
                typing.get_args(kind) if typing.get_origin(kind) is Literal else (True, False)
            )
        ]
        return ", ".join(values[:-1]) + " or " + values[-1]
    if typing.get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(field.annotation))
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    bounds = {
        annotated_types.Gt: ">",
        annotated_types.Ge: ">=",
        annotated_types.Lt: "<",
        annotated_types.Le: "<=",
    }
    limits = [
        f"{sign} {getattr(m, kind.__name__.lower())}"
        for m in field.metadata
        for kind, sign in bounds.items()
        if isinstance(m, kind)
    ]
    return " ".join([name[field.annotation], " and ".join(limits)]).strip()


def validate(params: typing.Any, source: Path = PARAMS_FILE) -> Params:
    if not isinstance(params, dict):
        raise PipelineError(
            f"{source}: expected a mapping of sections, got {type(params).__name__}"
        )
    try:
        return Params.model_validate(params)
    except ValidationError as e:
        error = e.errors()[0]
        loc = tuple(str(part) for part in error["loc"][:2])  # a union adds its member's name
        key = ".".join(loc)
        known = Params.model_fields if len(loc) == 1 else Params.model_fields[loc[0]].annotation
        if error["type"] == "extra_forbidden":
            kind = "section" if len(loc) == 1 else "key"
            shown = repr(key) if len(loc) == 1 else key
            fields = known if len(loc) == 1 else known.model_fields
            raise PipelineError(
                f"{source}: unknown {kind} {shown}; known: {', '.join(fields)}"
            ) from None
        if len(loc) == 1:
            what = (
                "missing section" if error["type"] == "missing" else "expected a mapping as section"
            )
            raise PipelineError(f"{source}: {what} {key!r}") from None
        field = known.model_fields[loc[1]]
        if error["type"] == "missing":
            raise PipelineError(f"{source}: missing key {key} ({describe(field)})") from None
        given = params[loc[0]][loc[1]]  # the key's whole value, where a list's item failed
        why = f" ({error['ctx']['error']})" if error["type"] == "value_error" else ""
        raise PipelineError(
            f"{source}: {key} must be {describe(field)}, got {given!r}{why}"
        ) from None


def load(section: str, path: Path = PARAMS_FILE) -> Section:
    """The validated `section` of params.yaml; the whole file is checked first."""
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    return getattr(validate(params, path), section)
