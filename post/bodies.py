"""The Post service's request bodies, strict (an unknown field or a wrong JSON type is 422:
``api.body.read_json``), its success bodies (for the OpenAPI description: ``api.openapi``),
and the 422 of a text that breaks a rule (``policies.text``)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.errors import Problem
from api.openapi import ID_PATTERN
from policies.text import DEFAULT_MAX_CHARS, HANDLE_MAX_LEN, TextRuleError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# The rules of ``policies.text`` as the OpenAPI description shows them (checked there, not here).
class SignupIn(_Strict):
    handle: str = Field(json_schema_extra={"pattern": f"^[A-Za-z0-9_]{{1,{HANDLE_MAX_LEN}}}$"},
                        description="Unique, case-insensitively")


class TweetIn(_Strict):
    text: str = Field(json_schema_extra={"minLength": 1, "maxLength": DEFAULT_MAX_CHARS},
                      description="At most TL_TWEET_MAX_CHARS code points after NFC; no control characters "
                                  "but \\n; not only whitespace")


class FollowIn(_Strict):
    target_user_id: str


class UserCreated(BaseModel):
    user_id: str = Field(pattern=ID_PATTERN)
    handle: str
    token: str = Field(description="The bearer token of the account; shown once")


class TweetOut(BaseModel):
    tweet_id: str = Field(pattern=ID_PATTERN)
    author_id: str = Field(pattern=ID_PATTERN)
    text: str
    created_at: str = Field(description="ISO-8601 UTC with milliseconds")


class FollowingOut(BaseModel):
    following: bool


def rule_problem(what: str, exc: TextRuleError) -> Problem:
    return Problem(422, f"{what} breaks rule '{exc.rule}': {exc.detail}", slug=f"{what}-rule", rule=exc.rule)
