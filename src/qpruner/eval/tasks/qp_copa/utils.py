"""COPA in lm-eval's super_glue/copa form from the local file's rows.

lm-eval's context is the premise without its final character (the period) followed by
" because" or " therefore"; the local query writes ``"premise, therefore"``, so the comma
goes. lm-eval's choices are the alternatives with a lower-cased first letter (already so in
the file) and a leading space, on top of the default target delimiter " ": the scored
continuation starts with two spaces in lm-eval, and does here too.
"""

CONNECTORS = ("because", "therefore")


def doc_to_text(doc: dict) -> str:
    head, _, connector = doc["query"].rpartition(", ")
    if connector not in CONNECTORS or not head:
        raise ValueError(f"COPA query does not end with ', because' or ', therefore': {doc['query']!r}")
    return f"{head} {connector}"


def doc_to_choice(doc: dict) -> list:
    return [" " + choice for choice in doc["choices"]]
