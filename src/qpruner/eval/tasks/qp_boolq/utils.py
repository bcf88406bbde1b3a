"""BoolQ rows as lm-eval's super_glue/boolq fields (``passage``, ``question``, ``label``).

The local file joins them as ``"Passage: P\\nQuestion: Q?"``; lm-eval's prompt is
``"P\\nQuestion: Q?\\nAnswer:"`` with the question's ``?`` added by the template, so we take
the ``?`` off here and the rendered prompt is lm-eval's own.
"""

PASSAGE, QUESTION = "Passage: ", "\nQuestion: "


def split_query(query: str) -> tuple[str, str]:
    """``(passage, question)`` of one query; the question is after the last marker."""
    if not query.startswith(PASSAGE) or QUESTION not in query:
        raise ValueError(f"BoolQ query not of the form 'Passage: ...\\nQuestion: ...': {query[:80]!r}")
    passage, question = query[len(PASSAGE) :].rsplit(QUESTION, 1)
    return passage, question.removesuffix("?")


def _fields(doc: dict) -> dict:
    passage, question = split_query(doc["query"])
    return {"passage": passage, "question": question, "label": int(doc["gold"])}


def process_docs(dataset):
    return dataset.map(_fields)
