"""Validation problems read the same everywhere: `field: message; other: message`."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from core.schemas.common import describe_validation_error
from core.settings import load_settings


class Inner(BaseModel):
    rate: int = Field(ge=1)


class Request(BaseModel):
    text: str = Field(min_length=1)
    inner: Inner

    @field_validator("text")
    @classmethod
    def _no_tabs(cls, value: str) -> str:
        if "\t" in value:
            raise ValueError("must not contain tabs")
        return value


def problems(raw: object) -> list[dict[str, object]]:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate(raw)
    return [dict(error) for error in caught.value.errors()]


def test_each_problem_is_named_by_its_field_path() -> None:
    line = describe_validation_error(problems({"text": "", "inner": {"rate": 0}}))
    assert line == (
        "text: String should have at least 1 character; "
        "inner.rate: Input should be greater than or equal to 1"
    )


def test_a_validator_message_reads_without_pydantic_prefix() -> None:
    assert describe_validation_error(problems({"text": "a\tb", "inner": {"rate": 1}})) == (
        "text: must not contain tabs"
    )


def test_location_parts_that_name_no_field_are_left_out() -> None:
    errors = [{"loc": ("body", "text"), "msg": "Field required"}]
    assert describe_validation_error(errors, skip={"body"}) == "text: Field required"


def test_a_problem_without_a_location_is_named_or_stands_alone() -> None:
    errors = [{"loc": ("body",), "msg": "Input should be an object"}]
    assert describe_validation_error(errors, skip={"body"}) == "Input should be an object"
    assert (
        describe_validation_error(errors, skip={"body"}, unnamed="request")
        == "request: Input should be an object"
    )
    assert describe_validation_error([], fallback="invalid message") == "invalid message"


def test_the_input_is_never_echoed() -> None:
    secret = "sk-do-not-print"
    line = describe_validation_error(problems({"text": secret, "inner": {"rate": secret}}))
    assert secret not in line
    assert line.startswith("inner.rate: ")


def test_a_bad_setting_is_named_as_its_variable() -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(port=0, database_url="postgres://x")
    assert str(exited.value) == (
        "invalid configuration: PORT: Input should be greater than or equal to 1; "
        "DATABASE_URL: must start with sqlite:///, mongodb:// or mongodb+srv://"
    )
