"""What the service and the agent tool take and answer: typed requests, results, errors, and the
per-request input checks both apply."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from yelp_lora.artifacts import AdapterMeta
from yelp_lora.config import LABEL_NAMES, MAX_REQUEST_TEXT_CHARS, MAX_TEXTS_PER_REQUEST
from yelp_lora.data.rows import text_problem
from yelp_lora.inference.predictor import ModelInfo, Prediction
from yelp_lora.registry.manifest import Manifest


class SentimentResult(BaseModel):
    """One review's predicted sentiment."""

    label: str = Field(description="One of " + ", ".join(LABEL_NAMES))
    label_id: int = Field(ge=0, le=len(LABEL_NAMES) - 1, description="0-4, the index of label")
    stars: int = Field(ge=1, le=len(LABEL_NAMES), description="Predicted star rating, 1-5 (= label_id + 1)")
    confidence: float = Field(description="Probability of the predicted label")
    probabilities: dict[str, float] = Field(
        description="Probability of each of the five labels (sums to 1), after the model's temperature (model.temperature)"
    )
    truncated: bool = Field(
        description="True when part of the review was not read: it was longer than the model's token limit and was cut "
        "(or, with long_text 'chunk', was longer than its windows reach)"
    )
    windows: int = Field(
        ge=1, description="Windows of the token limit the review was read in, their probabilities averaged: 1 unless the "
        "service reads long reviews in chunks (model.long_text 'chunk') and this one was longer than the limit"
    )


class Classification(BaseModel):
    model: ModelInfo
    results: list[SentimentResult] = Field(description="One result per input text, in input order")


def classification(info: ModelInfo, predictions: list[Prediction]) -> Classification:
    return Classification(model=info, results=[SentimentResult(**p.as_dict()) for p in predictions])


class InputError(ValueError):
    """Texts a service cannot classify; `code` names the problem for API clients."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_texts(
    texts: list, *, max_texts: int = MAX_TEXTS_PER_REQUEST, max_chars: int = MAX_REQUEST_TEXT_CHARS, single: bool = False,
) -> list[str]:
    """The texts of one service request, or an InputError naming the first problem (where and why);
    `single`: the request sent one `text`, so the problem is named as that field."""
    if not texts:
        raise InputError("no_texts", "no texts given: send at least one review text")
    if len(texts) > max_texts:
        raise InputError("too_many_texts", f"{len(texts)} texts in one request, over the limit of {max_texts}")
    for index, text in enumerate(texts):
        where = "text" if single else f"texts[{index}]"
        problem = text_problem(text)
        if problem:
            raise InputError("invalid_text", f"{where}: {problem}")
        if len(text) > max_chars:
            raise InputError("text_too_long", f"{where} is {len(text):,} characters long, over the limit of {max_chars:,}")
    return texts


class ClassifyRequest(BaseModel):
    """Send `texts` (a list of reviews) or `text` (one review)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["The food was cold and the waiter rude.", "Best tacos in town!"]}]},
    )
    texts: list[StrictStr] | None = Field(None, description="Review texts to classify, in order")
    text: StrictStr | None = Field(None, description="One review text (instead of texts)")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable problem, e.g. invalid_text, too_many_texts, unauthorized")
    message: str = Field(description="What is wrong and how to fix it")
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelResponse(BaseModel):
    model: ModelInfo
    manifest: Manifest | None = Field(description="Registry manifest (hashes, config, data, metrics); null for a bare adapter")
    adapter_meta: AdapterMeta
    limits: dict[str, Any]
