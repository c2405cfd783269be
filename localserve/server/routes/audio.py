"""OpenAI's speech to text, ``POST /v1/audio/transcriptions``, for models whose
projector takes sound: a chat under the hood (schemas/audio.py has its instruction and
answers), run like any other job.

The body is a multipart form, as OpenAI's clients send it: ``file``, ``model``,
``language``, ``prompt``, ``response_format``, ``temperature`` (0 by default, as
OpenAI's), and llama-server's ``max_tokens``. A model that cannot hear is refused
before anything loads (``MODEL does not support audio``), and so is a file that is not
a sound.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from localserve.errors import InvalidOptionError
from localserve.runtime.protocol import GenerateJob
from localserve.schemas.audio import (
    Transcription,
    TranscriptionUsage,
    TranscriptionVerbose,
    check_format,
    instruction,
    seconds,
)
from localserve.schemas.media import sniff
from localserve.server.errors import OPENAI_ERRORS
from localserve.server.routes.deps import answers, model_request, prepared, run_job

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)

ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Transcription,
        "description": "json: the text and usage; verbose_json: also the language and "
        "duration; text: the text alone, as text/plain",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.post("/audio/transcriptions", response_model=None, responses=ANSWERS)
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File(description="The sound: WAV, MP3 or FLAC")],
    model: Annotated[str, Form(min_length=1)],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=2)] = 0.0,
    max_tokens: Annotated[int | None, Form(ge=1)] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    check_format(response_format)
    if stream:
        raise InvalidOptionError("streamed transcriptions are not supported: leave stream out")
    data = await file.read()
    if not data:
        raise InvalidOptionError("file is empty")
    if sniff(data, "file") != "audio":
        raise InvalidOptionError("file is an image, not a sound (send WAV, MP3 or FLAC)")
    overrides = {"temperature": temperature, "num_predict": max_tokens}
    model_req, sampling = model_request(request, model, None, None, overrides)
    message = {
        "role": "user",
        "content": instruction(language, prompt),
        "images": [base64.b64encode(data).decode("ascii")],
    }
    # No reasoning before the transcript, on a model that would think by default.
    job = GenerateJob(messages=[message], options=sampling, think=False)
    job = await prepared(request, model, job)
    (answer,) = await answers(run_job(request, model_req, job, time.perf_counter_ns()), 1)
    text = answer.content.strip()
    usage = TranscriptionUsage.of(answer.done)
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        verbose = TranscriptionVerbose(
            language=language or "", duration=seconds(data), text=text, usage=usage
        )
        return JSONResponse(verbose.model_dump())
    return JSONResponse(Transcription(text=text, usage=usage).model_dump())
