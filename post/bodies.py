"""The Post service's request bodies, strict (an unknown field or a wrong JSON type is 422:
``api.body.read_json``), and the 422 of a text that breaks a rule (``policies.text``)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from api.errors import Problem
from policies.text import TextRuleError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignupIn(_Strict):
    handle: str


class TweetIn(_Strict):
    text: str


class FollowIn(_Strict):
    target_user_id: str


def rule_problem(what: str, exc: TextRuleError) -> Problem:
    return Problem(422, f"{what} breaks rule '{exc.rule}': {exc.detail}", slug=f"{what}-rule", rule=exc.rule)
