"""The README's Python snippets run as written, in order, in one namespace (as a reader pastes them).

A block whose first line is ``# readme-test: skip (reason)`` is not run: the transformers example
needs a model download (tests/test_transformers.py runs the same calls on a small random-weight model).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

import stablesoftmax as ss

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARKER = "# readme-test: skip"


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def test_every_python_block_runs_in_order() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if not b.lstrip().startswith(SKIP_MARKER)]
    skipped = [b for b in blocks if b.lstrip().startswith(SKIP_MARKER)]
    assert len(runnable) >= 4 and all("from_pretrained" in b for b in skipped), skipped
    namespace: dict[str, object] = {"__name__": "readme"}
    out = io.StringIO()
    try:
        for i, block in enumerate(runnable):
            with contextlib.redirect_stdout(out):
                try:
                    exec(compile(block, f"README.md python block {i}", "exec"), namespace)
                except Exception as exc:  # name the block in the failure
                    pytest.fail(f"README python block {i} raised {type(exc).__name__}: {exc}\n{block}")
    finally:
        ss.unpatch()
    from stablesoftmax import _patch

    assert torch.softmax is _patch._orig("torch.softmax")  # the README's patch() block unpatches again


def test_quickstart_comments_tell_the_truth() -> None:
    inf = float("inf")
    logits = torch.tensor([[2.0, inf, 1.0, -inf], [-inf] * 4], dtype=torch.float16)
    assert ss.softmax(logits, -1).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert ss.log_softmax(logits, -1).tolist() == [[-inf, 0, -inf, -inf], [-inf] * 4]
    assert torch.isnan(torch.softmax(logits, -1)).all()
    masked = r"1 of 2 rows have every logit -inf \(row 1\)\. row 1: 0 NaN, 0 \+inf, 4 -inf"
    with pytest.raises(ss.StableSoftmaxError, match=masked):
        ss.sample_from_logits(logits)


def test_install_note_then_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    head = text[: text.index("## ")]
    note = head.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    first_block = head.index("```bash")
    assert note < first_block
    commands = head[first_block:].split("```")[1].splitlines()[1:]
    assert [c.split("#")[0].strip() for c in commands if c.strip()] == [
        "pip install . && python -m stablesoftmax bench",
        'pip install -e ".[test]" && pytest',
    ]
    assert "docs/contract.md" in head and "SPEC.md" not in text


def test_quoted_error_messages_match_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    quoted = "input dtype torch.int64 is not supported; pass dtype=torch.float32"
    assert quoted in text
    with pytest.raises(ss.StableSoftmaxError, match=re.escape(quoted)):
        ss.softmax(torch.arange(4), -1)
    assert "output dtype torch.int32 is not supported" in text
    with pytest.raises(ss.StableSoftmaxError, match=r"output dtype torch\.int32 is not supported"):
        ss.softmax(torch.ones(4), -1, dtype=torch.int32)
