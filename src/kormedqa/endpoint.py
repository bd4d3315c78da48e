"""An OpenAI-compatible chat endpoint as a generator: `vllm serve`, llama.cpp's server, a hosted model.

Requests go through the `openai` client library (`pip install 'kormedqa[teacher]'`), which
retries connection errors, 408/409/429 and 5xx replies with exponential back-off up to
`max_retries` times and honours `Retry-After`. What still fails after that becomes one
`TeacherError` line (a `UserError`: exit 2): the caller has saved every question finished before
it, and writes no final output.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .errors import UserError, one_line

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class TeacherError(UserError, RuntimeError):
    """The teacher endpoint cannot be used: unreachable, refused key, rate limit past the retries, malformed reply."""


class EndpointGenerator:
    """Chat completions from `base_url` (".../v1") for model `model`, several requests at a time.

    `gen(conversations, max_new_tokens, sampling)` -> one reply text per conversation (a list of
    {"role", "content"} messages), in order. `sampling` is a `scorers.Sampling`; its per-request
    seeds go out as the API's `seed` (servers that honour it: vLLM, llama.cpp, OpenAI's own;
    others ignore it, and their samples are then not reproducible). The key is read from the
    environment variable `key_env`; a server without keys accepts any, so none set sends "none".
    """

    def __init__(self, base_url: str, model: str, key_env: str = DEFAULT_KEY_ENV, concurrency: int = 8,
                 max_retries: int = 3, timeout: float = 600.0):
        try:
            from openai import OpenAI
        except ImportError:  # optional: only endpoint teachers need it
            raise UserError("--teacher-url needs the openai client: pip install 'kormedqa[teacher]'") from None
        self.base_url, self.model, self.concurrency = base_url, model, max(1, concurrency)
        # The client's HTTP layer logs every request at INFO: thousands of lines around the progress bar.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(key_env) or "none", max_retries=max_retries,
                             timeout=timeout)

    def check(self) -> None:
        """One cheap request (the model list) so a wrong URL or key fails before any output is claimed.

        Raises TeacherError (one line) for an unreachable server or a refused key.
        """
        self._call(self.client.models.list)

    def __call__(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int, sampling) -> list[str]:
        seeds = list(sampling.seeds) or [None] * len(conversations)

        def one(i: int) -> str:
            extra = {"top_p": sampling.top_p} if sampling.temperature > 0 else {}
            reply = self._call(self.client.chat.completions.create, model=self.model, messages=list(conversations[i]),
                               max_tokens=max_new_tokens, temperature=sampling.temperature, seed=seeds[i], **extra)
            choices = getattr(reply, "choices", None)
            content = choices[0].message.content if choices else None
            if not isinstance(content, str):
                raise TeacherError(f"{self.base_url}: malformed reply from model {self.model!r} (no message text): "
                                   f"{one_line(repr(reply))[:200]}")
            return content

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(conversations)))) as pool:
            return list(pool.map(one, range(len(conversations))))

    def _call(self, fn, **kwargs):
        import openai

        try:
            return fn(**kwargs)
        except openai.AuthenticationError as err:
            raise TeacherError(f"{self.base_url}: the key was refused ({err.status_code}); set the environment "
                               "variable named by --teacher-key-env") from None
        except openai.RateLimitError as err:
            raise TeacherError(f"{self.base_url}: rate limited past {self.client.max_retries} retries ({one_line(err)})"
                               "; rerun with --resume later, or lower --batch-size") from None
        except openai.APIConnectionError as err:  # also timeouts
            raise TeacherError(f"{self.base_url}: unreachable ({one_line(err)})") from None
        except openai.APIStatusError as err:  # 404 unknown model, 400 context too long, 5xx past the retries
            raise TeacherError(f"{self.base_url}: HTTP {err.status_code} for model {self.model!r}: {one_line(err)[:300]}") from None
        except openai.APIResponseValidationError as err:
            raise TeacherError(f"{self.base_url}: malformed reply ({one_line(err)[:300]})") from None
