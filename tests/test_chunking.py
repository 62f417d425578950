"""Chunking follows structure: headings start chunks, code blocks stay whole, prose overlaps."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batos.memory.chunking import chunk_text

DOC = """# Blobs

Blob storage keeps model files beside the image. Each blob is one file.

## Committed files

A committed blob file is read-only. The engine maps it instead of copying it.

```python
def committed(self):
    return self._path

print("never split")
```

# Bridge

The bridge routes replies on the envelope they came with.
"""


def test_headings_start_chunks_and_name_their_sections():
    chunks = chunk_text(DOC, max_words=50, overlap_words=5)
    assert [(c.kind, c.section) for c in chunks] == [
        ("prose", "Blobs"), ("prose", "Blobs > Committed files"), ("code", "Blobs > Committed files"),
        ("prose", "Bridge")]
    assert chunks[0].text.startswith("Blob storage keeps") and "routes replies" in chunks[3].text
    assert DOC[chunks[3].start:].startswith("The bridge routes")  # offsets point into the document


def test_a_code_block_is_one_chunk_even_with_blank_lines_inside():
    code = next(c for c in chunk_text(DOC, max_words=50) if c.kind == "code")
    assert code.text.startswith("```python") and code.text.endswith("```")
    assert 'print("never split")' in code.text and "def committed" in code.text


def test_long_prose_is_cut_at_sentence_ends_with_overlap():
    sentences = [f"Sentence number {i} says something about blob {i}." for i in range(40)]
    chunks = chunk_text(" ".join(sentences), max_words=60, overlap_words=10)
    assert len(chunks) > 3
    for before, after in zip(chunks, chunks[1:]):
        tail = " ".join(before.text.split()[-10:])
        assert after.text.startswith(tail)  # the next chunk repeats the end of the one before
        own = after.text[len(tail):].strip()
        assert own.startswith("Sentence number")  # cut at a sentence end, not inside one
    assert all(len(c.text.split()) <= 70 for c in chunks)


def test_overlap_never_crosses_a_heading():
    chunks = chunk_text("# A\n\nalpha beta gamma.\n\n# B\n\ndelta epsilon.", max_words=50, overlap_words=5)
    assert [c.text for c in chunks] == ["alpha beta gamma.", "delta epsilon."]


def test_bad_limits_are_refused_and_empty_text_has_no_chunks():
    assert chunk_text("") == [] and chunk_text("\n\n   \n") == []
    with pytest.raises(ValueError):
        chunk_text("x", max_words=10, overlap_words=10)


words = st.text(alphabet="abcdefgh", min_size=1, max_size=8)
paragraphs = st.lists(words, min_size=1, max_size=60).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(paragraphs, words.map(lambda w: f"# {w}")), min_size=1, max_size=12),
       st.integers(5, 40))
def test_every_word_of_the_document_is_in_some_chunk(parts, max_words):
    text = "\n\n".join(parts)
    chunks = chunk_text(text, max_words=max_words, overlap_words=max_words // 4)
    body = [w for part in parts if not part.startswith("# ") for w in part.split()]
    found = [w for c in chunks for w in c.text.split()]
    for word in set(body):
        assert found.count(word) >= body.count(word)
    assert all(len(c.text.split()) <= max_words + max_words // 4 for c in chunks)
    assert all(not re.match(r"^#\s", c.text) for c in chunks)  # headings are sections, not text
