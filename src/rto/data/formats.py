"""Turn raw rows into SFT, preference and prompt examples (TRL's column conventions).

Every example field is either a plain string or a conversation: a list of
``{"role": "system" | "user" | "assistant", "content": str}`` messages. Within one example the
prompt and its completion(s) are both strings or both conversations; rendering (chat template
or not) happens later, in `rto.data.tokenize`.

The format of a dataset is read from the columns of its first row, then every row must follow
it; each problem is a `DataError` naming the source, the 1-based row and the column.

Formats, in the order they are recognised:

- SFT: ``prompt`` + ``completion`` (loss on the completion only); ``messages`` (the last turn
  must be the assistant's and is the completion, all earlier turns are the prompt); ``text``
  (loss on the whole text, prompt ``None``).
- Preferences: ``chosen`` + ``rejected``, with an explicit ``prompt`` or an implicit one:
    * conversations: the prompt is the leading messages both conversations share. This is also
      used when a ``prompt`` column holds a string but chosen/rejected are full conversations
      (UltraFeedback-binarized style); the string is then ignored. If an explicit
      conversational prompt is repeated at the start of chosen and rejected it is stripped.
    * strings: the prompt is the longest common character prefix, moved back to the start of a
      word if it ends inside one ("... is 4" / "... is 42" splits before "4"), then moved back
      before trailing whitespace so each completion starts with its space (" great"), the way
      BPE tokenizers attach spaces to the following word. See `split_shared_prefix`.
  A row whose chosen equals its rejected is an error (`identical="error"`, the default), since
  it carries no preference and usually means a broken export; ``identical="drop"`` skips such
  rows with a logged count instead.
- Prompts (PPO rollouts): ``prompt``, or ``messages`` minus a trailing assistant turn. The
  other columns of the row are kept under ``"meta"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass

from rto.errors import DataError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class ColumnMap:
    """Names of the columns holding each field, when a dataset does not use TRL's names."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"

    @classmethod
    def from_config(cls, cfg) -> ColumnMap:
        """The column-name fields of a stage's config (``text_column``, ``prompt_column``, ...); a stage
        without one of them (PPO has no ``chosen_column``) keeps TRL's name."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(cfg, f"{n}_column") for n in names if hasattr(cfg, f"{n}_column")})


# --------------------------------------------------------------------------- public


def to_sft_examples(rows: list[dict], columns: ColumnMap | None = None, source: str = "<data>") -> list[dict]:
    """Rows -> ``[{"prompt": str | list[dict] | None, "completion": str | list[dict]}]``."""
    keys = _first_row_keys(rows, source)
    c = columns or ColumnMap()
    if c.prompt in keys or c.completion in keys:
        _require(source, "SFT", keys, [c.prompt, c.completion], c)
        return [_sft_prompt_completion(row, c, _Where(source, i)) for i, row in _enumerate(rows, source)]
    if c.messages in keys:
        return [_sft_messages(row, c, _Where(source, i)) for i, row in _enumerate(rows, source)]
    if c.text in keys:
        return [
            {"prompt": None, "completion": _string(row, c.text, _Where(source, i))}
            for i, row in _enumerate(rows, source)
        ]
    raise _missing(source, "SFT", keys, [[c.text], [c.prompt, c.completion], [c.messages]], c)


def to_preference_examples(
    rows: list[dict],
    columns: ColumnMap | None = None,
    source: str = "<data>",
    identical: str = "error",
) -> list[dict]:
    """Rows -> ``[{"prompt", "chosen", "rejected"}]``, all strings or all message lists.

    `identical` decides what a row with chosen == rejected does: "error" (default) or "drop".
    """
    if identical not in ("error", "drop"):
        raise ValueError(f"identical must be 'error' or 'drop', got {identical!r}")
    columns = columns or ColumnMap()
    keys = _first_row_keys(rows, source)
    _require(source, "preference", keys, [columns.chosen, columns.rejected], columns)
    out, n_identical = [], 0
    for i, row in _enumerate(rows, source):
        ex = _preference_row(row, columns, _Where(source, i))
        if ex["chosen"] == ex["rejected"]:
            if identical == "error":
                raise DataError(
                    f"{source}: row {i}: {columns.chosen!r} and {columns.rejected!r} are identical, so the "
                    "row expresses no preference (fix the data, or pass --identical-pairs drop to skip such rows)"
                )
            n_identical += 1
            continue
        out.append(ex)
    if n_identical:
        logger.warning("%s: dropped %d rows whose chosen equals rejected", source, n_identical)
    if not out:
        raise DataError(f"{source}: no usable preference rows ({n_identical} had chosen == rejected)")
    return out


def to_prompt_examples(
    rows: list[dict], columns: ColumnMap | None = None, source: str = "<data>"
) -> list[dict]:
    """Rows -> ``[{"prompt": str | list[dict], "meta": {other columns}}]`` for rollouts."""
    keys = _first_row_keys(rows, source)
    c = columns or ColumnMap()
    if c.prompt in keys:
        col = c.prompt
    elif c.messages in keys:
        col = c.messages
    else:
        raise _missing(source, "prompt", keys, [[c.prompt], [c.messages]], c)
    out = []
    for i, row in _enumerate(rows, source):
        where = _Where(source, i)
        if col == c.prompt:
            prompt = _string_or_messages(row, col, where)
        else:
            prompt = _messages(row, col, where)
            if prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
            if not prompt:
                raise DataError(f"{where(col)}: nothing is left after removing the final assistant turn")
        out.append({"prompt": prompt, "meta": {k: v for k, v in row.items() if k != col}})
    return out


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two full texts into (prompt, chosen completion, rejected completion).

    The prompt is the longest common prefix, cut back to a word start if it ends inside a word
    that continues differently, and without trailing whitespace (the whitespace goes to the
    completions). Concatenating prompt + completion always gives back the original text.
    """
    k = len(os.path.commonprefix([chosen, rejected]))
    if k and _is_word(chosen[k - 1]) and any(k < len(s) and _is_word(s[k]) for s in (chosen, rejected)):
        while k and _is_word(chosen[k - 1]):
            k -= 1
    while k and chosen[k - 1].isspace():
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


# --------------------------------------------------------------------------- rows


class _Where:
    """Formats "source: row N, field 'x'" for error messages."""

    def __init__(self, source: str, row: int):
        self.source, self.row = source, row

    def __call__(self, field: str | None = None) -> str:
        return f"{self.source}: row {self.row}" + (f", field {field!r}" if field else "")


def _sft_prompt_completion(row: dict, c: ColumnMap, where: _Where) -> dict:
    prompt = _string_or_messages(row, c.prompt, where)
    completion = _string_or_messages(row, c.completion, where)
    _same_kind(prompt, completion, c.prompt, c.completion, where)
    if isinstance(completion, list):
        _check_completion_turns(completion, c.completion, where)
    return {"prompt": prompt, "completion": completion}


def _sft_messages(row: dict, c: ColumnMap, where: _Where) -> dict:
    conv = _messages(row, c.messages, where)
    if conv[-1]["role"] != "assistant":
        raise DataError(
            f"{where(c.messages)}: the last message has role {conv[-1]['role']!r}; an SFT conversation "
            "must end with the assistant turn to learn"
        )
    if len(conv) < 2:
        raise DataError(f"{where(c.messages)}: only one message; the final assistant turn needs a prompt")
    _check_completion_turns(conv[-1:], c.messages, where)
    return {"prompt": conv[:-1], "completion": conv[-1:]}


def _preference_row(row: dict, c: ColumnMap, where: _Where) -> dict:
    chosen = _string_or_messages(row, c.chosen, where)
    rejected = _string_or_messages(row, c.rejected, where)
    _same_kind(chosen, rejected, c.chosen, c.rejected, where)
    prompt = row.get(c.prompt)
    if isinstance(chosen, str):
        if prompt is None:
            prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
            if not prompt:
                raise DataError(
                    f"{where()}: no {c.prompt!r} column, and {c.chosen!r} and {c.rejected!r} share no "
                    "prefix to use as the prompt (after backing off to a word boundary); add a prompt column"
                )
        else:
            prompt = _string_or_messages(row, c.prompt, where)
            _same_kind(prompt, chosen, c.prompt, c.chosen, where)
        for name, value in ((c.chosen, chosen), (c.rejected, rejected)):
            if not value.strip():
                raise DataError(f"{where(name)}: the completion is empty (after removing the prompt)")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    if isinstance(prompt, (list, tuple)):  # explicit conversational prompt
        prompt = _messages(row, c.prompt, where)
        n = len(prompt)
        if chosen[:n] == prompt and rejected[:n] == prompt:  # prompt repeated inside the conversations
            chosen, rejected = chosen[n:], rejected[n:]
    elif prompt is None or isinstance(prompt, str):  # implicit: the shared leading messages
        if all(m["role"] == "assistant" for m in chosen + rejected):
            raise DataError(
                f"{where(c.prompt)}: {c.chosen!r}/{c.rejected!r} are assistant messages, so the prompt must be "
                "a message list too (e.g. [{'role': 'user', 'content': ...}])"
            )
        n = _common_length(chosen, rejected)
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt:
            raise DataError(
                f"{where()}: {c.chosen!r} and {c.rejected!r} share no leading messages to use as the prompt"
            )
    else:
        raise DataError(
            f"{where(c.prompt)}: expected a string or a message list, got {type(prompt).__name__}"
        )
    for name, value in ((c.chosen, chosen), (c.rejected, rejected)):
        if not value:
            raise DataError(f"{where(name)}: no messages are left after removing the shared prompt")
        _check_completion_turns(value, name, where)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# --------------------------------------------------------------------------- fields


def _field(row: dict, name: str, where: _Where):
    value = row.get(name)
    if value is None:
        raise DataError(f"{where(name)}: missing or null")
    return value


def _string(row: dict, name: str, where: _Where) -> str:
    value = _field(row, name, where)
    if not isinstance(value, str):
        raise DataError(f"{where(name)}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where(name)}: empty")
    return value


def _string_or_messages(row: dict, name: str, where: _Where) -> str | list[dict]:
    value = _field(row, name, where)
    if isinstance(value, str):
        return _string(row, name, where)
    if isinstance(value, (list, tuple)):
        return _messages(row, name, where)
    raise DataError(f"{where(name)}: expected a string or a list of messages, got {type(value).__name__}")


def _messages(row: dict, name: str, where: _Where) -> list[dict]:
    """Validate a conversation; returns copies without null keys (parquet fills absent keys with None)."""
    value = _field(row, name, where)
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where(name)}: expected a list of messages, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where(name)}: empty conversation")
    out = []
    for j, m in enumerate(value, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(
                f"{where(name)}: message {j} must be an object with 'role' and 'content', got {m!r:.80}"
            )
        if m["role"] not in ROLES:
            raise DataError(f"{where(name)}: message {j} has role {m['role']!r}; expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise DataError(
                f"{where(name)}: message {j} content must be a string, got {type(m['content']).__name__}"
            )
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def _same_kind(a, b, name_a: str, name_b: str, where: _Where) -> None:
    if isinstance(a, str) != isinstance(b, str):
        kind = lambda v: "a string" if isinstance(v, str) else "a message list"  # noqa: E731
        raise DataError(
            f"{where()}: {name_a!r} is {kind(a)} but {name_b!r} is {kind(b)}; use strings for both or "
            "message lists for both"
        )


def _check_completion_turns(messages: list[dict], name: str, where: _Where) -> None:
    for j, m in enumerate(messages, start=1):
        if m["role"] != "assistant":
            raise DataError(
                f"{where(name)}: completion message {j} has role {m['role']!r}; completions must be "
                "assistant turns"
            )
    if not any(m["content"].strip() for m in messages):
        raise DataError(f"{where(name)}: the assistant completion is empty")


def _common_length(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


# --------------------------------------------------------------------------- columns


def _enumerate(rows: list[dict], source: str):
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(
                f"{source}: row {i}: expected an object with named columns, got {type(row).__name__}"
            )
        yield i, row


def _first_row_keys(rows: list[dict], source: str) -> set[str]:
    if not rows:
        raise DataError(f"{source}: no rows")
    if not isinstance(rows[0], dict):
        raise DataError(
            f"{source}: row 1: expected an object with named columns, got {type(rows[0]).__name__}"
        )
    return set(rows[0])


def _require(source: str, kind: str, keys: set[str], needed: list[str], columns: ColumnMap) -> None:
    if not all(n in keys for n in needed):
        raise _missing(source, kind, keys, [needed], columns)


def _missing(
    source: str, kind: str, keys: set[str], options: list[list[str]], columns: ColumnMap
) -> DataError:
    """Name what was expected, what was found, and close matches with the option that maps each
    ("did you mean 'reject' for 'rejected'? ... --rejected-column reject")."""
    expected = " or ".join("+".join(repr(n) for n in opt) for opt in options)
    found = sorted(keys)
    role_of = {getattr(columns, f.name): f.name for f in dataclasses.fields(columns)}
    hints, flags = [], []
    for opt in options:
        for name in opt:
            if name not in keys:
                close = difflib.get_close_matches(name, found, n=1, cutoff=0.6)
                if close and f"{close[0]!r} for {name!r}" not in hints:
                    hints.append(f"{close[0]!r} for {name!r}")
                    flags.append(f"--{role_of.get(name, name)}-column {close[0]}")
    msg = f"{source}: row 1: not {kind} data: expected columns {expected}; found {found}"
    if hints:
        msg += f". Did you mean {', '.join(hints)}? Rename the column, or pass {' '.join(flags)}"
    return DataError(msg)
