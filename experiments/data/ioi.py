"""Indirect-object-identification (IOI) templates and the name pool, written for this project.

A template introduces two people (``{X}``, ``{Y}``), then has one of them (``{S}``, the
subject) do something to the other; the model should complete with the other name (the
indirect object, IO). ABBA order: X = IO, Y = S. BABA order: X = S, Y = IO.
Every template ends right before the IO name, so the prediction is the next token. No
template starts with a name: position 0 is an attention sink for the subject, and a name
there is rarely copied (measured: 0/4 ABBA prompts correct for such a template).

Names come from faker's en_US first-name list (MIT), most frequent first, keeping only
names that are one token (with a leading space) for the tokenizer in use.
"""

from __future__ import annotations

from collections.abc import Sequence

from guard.errors import ToolkitError

TEMPLATES: tuple[str, ...] = (
    "When {X} and {Y} went to the store, {S} gave a drink to",
    "After {X} and {Y} arrived at the park, {S} handed a ball to",
    "While {X} and {Y} were working at the office, {S} sent an email to",
    "When {X} and {Y} got to the party, {S} gave a present to",
    "Last week, {X} and {Y} went to the library together. Later, {S} lent a book to",
    "After the meeting, {X} and {Y} walked to the station, and {S} passed a ticket to",
    "During dinner, {X} and {Y} talked about the trip. Then {S} passed the salt to",
    "When {X} and {Y} visited the museum, {S} showed a painting to",
    "At the beach, {X} and {Y} built a sandcastle, and {S} handed a shovel to",
    "On Friday, {X} and {Y} finished the project, so {S} wrote a thank-you note to",
    "Yesterday {X} and {Y} cooked lunch at home, and afterwards {S} gave a plate to",
    "When {X} and {Y} reached the hospital, {S} brought some flowers to",
)

ORDERS: tuple[str, ...] = ("ABBA", "BABA")

# Frequent first names that are also common words, months or places: the model may read
# them as something other than a person, which muddies the IOI behaviour.
AMBIGUOUS_NAMES = frozenset(
    """
    Amber April Angel Austin Autumn Bill Brook Brooke Carol Chad Chase Christian Crystal Dale
    Dawn Dean Destiny Faith Frank Glenn Grace Heather Holly Hope Hunter Jack Jade Jordan Joy
    June Kim Lee Lynn Madison Mark May Miles Morgan Paris Pat Ray Rich Robin Rose Ruby Savannah
    Shannon Sierra Sky Summer Sydney Taylor Victoria Virginia Will Winter Jesus
    """.split()
)


def faker_first_names() -> list[str]:
    """faker's en_US first names (male and female), most frequent first; ties by name."""
    from faker.providers.person.en_US import Provider

    weights = dict(Provider.first_names_male)
    for name, w in Provider.first_names_female.items():
        weights[name] = max(w, weights.get(name, 0.0))
    return sorted(weights, key=lambda n: (-weights[n], n))


def is_single_token(tokenizer, text: str) -> bool:
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1


def single_token_names(tokenizer, limit: int | None = 100, candidates: Sequence[str] | None = None) -> list[str]:
    """The first ``limit`` unambiguous names whose `` " " + name`` is a single token."""
    pool = faker_first_names() if candidates is None else list(candidates)
    out = []
    for name in pool:
        if name in AMBIGUOUS_NAMES or not is_single_token(tokenizer, " " + name):
            continue
        out.append(name)
        if limit is not None and len(out) >= limit:
            break
    return out


def fill(template: str, order: str, io: str, s: str) -> str:
    """The prompt for one template, order and pair of names."""
    if order == "ABBA":
        x, y = io, s
    elif order == "BABA":
        x, y = s, io
    else:
        raise ToolkitError(f"IOI data: order must be one of {ORDERS}, got {order!r}")
    return template.format(X=x, Y=y, S=s)
