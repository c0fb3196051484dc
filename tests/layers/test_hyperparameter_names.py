"""The hyperparameters have one source: `HyperParameters` (jobstore/documents.py).

Everything else that names them is checked against it here, so that adding, renaming or
re-defaulting one without the others fails: the proto message, the client's proto <->
JSON conversion, the CLI's flags, the Bedrock face's string map, and the table in
docs/hyperparameters.md (names and documented defaults).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tuneforge import convert
from tuneforge.create_flags import CREATE_FLAGS
from tuneforge.v1 import fine_tuning_pb2 as pb

from jobstore.documents import HyperParameters
from service.faces.bedrock.mapping import hyper_parameter_strings

ROOT = Path(__file__).resolve().parents[2]
NAMES = set(HyperParameters.model_fields)
DEFAULTS = HyperParameters().model_dump()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _same_default(documented: str, name: str) -> bool:
    value: Any = DEFAULTS[name]
    text = documented.strip().strip("`")
    if value is None:
        return text.startswith("unset") or text.startswith(":") or "per architecture" in text
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, int | float):  # "0: off", "1.0" ...: the number first
        return float(re.split(r"[:\s]", text)[0]) == float(value)
    return text == str(getattr(value, "value", value))


def test_the_proto_message_has_every_hyperparameter_and_no_other() -> None:
    proto_names = {field.name for field in pb.HyperParameters.DESCRIPTOR.fields}
    assert proto_names == {_snake(name) for name in NAMES}


def test_the_clients_conversion_maps_every_hyperparameter_to_its_proto_field() -> None:
    mapped = {**convert._HYPER, **convert._HYPER_LISTS}
    assert set(mapped) == NAMES
    assert all(mapped[name] == _snake(name) for name in NAMES)


def test_every_hyperparameter_has_a_cli_flag_whose_documented_default_is_the_models() -> None:
    flags = {
        path.removeprefix("hyperParameters."): help_text
        for _, path, help_text in CREATE_FLAGS
        if path.startswith("hyperParameters.")
    }
    assert set(flags) == NAMES
    wrong = {}
    for name, help_text in flags.items():
        documented = re.search(r"\(default ([^)]+)\)", help_text)
        if documented is not None and not _same_default(documented.group(1), name):
            wrong[name] = (documented.group(1), DEFAULTS[name])
    assert not wrong, wrong


def test_the_bedrock_string_map_names_every_hyperparameter() -> None:
    assert set(hyper_parameter_strings(HyperParameters())) <= NAMES
    every = HyperParameters(loraTargetModules=["q_proj"], dropout=0.1)
    assert set(hyper_parameter_strings(every)) == NAMES


def test_the_docs_table_lists_every_hyperparameter_with_the_models_default() -> None:
    rows = re.findall(
        r"^\| `(\w+)` \| ([^|]+) \|", (ROOT / "docs" / "hyperparameters.md").read_text(), re.M
    )
    documented = dict(rows)
    assert set(documented) == NAMES
    wrong = {n: (d, DEFAULTS[n]) for n, d in documented.items() if not _same_default(d, n)}
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_hyperparameter_has_a_description_in_the_model(name: str) -> None:
    assert HyperParameters.model_fields[name].description, name
