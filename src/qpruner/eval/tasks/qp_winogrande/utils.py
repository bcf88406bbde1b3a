"""WinoGrande's partial scoring in lm-eval's terms (lm_eval/tasks/winogrande).

lm-eval puts the options in the *contexts*: ``doc_to_choice`` gives the two sentence
beginnings, ``doc_to_target`` the shared continuation, and ``doc_to_text`` - read as the gold
index when the choices are contexts - the answer. The local rows carry those three directly.
"""


def doc_to_text(doc: dict) -> int:
    return int(doc["gold"])


def doc_to_target(doc: dict) -> str:
    return doc["continuation"]


def doc_to_choice(doc: dict) -> list:
    return list(doc["context_options"])
