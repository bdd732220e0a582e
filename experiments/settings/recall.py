"""Knowledge suppression (recall): the offline stand-in for WMDP-style unlearning by clamping.

Source: the unlearning setting of Cui, Shen, Yang (arXiv 2606.18322), where latents tied
to a hazardous topic are clamped and a multiple-choice answer flips; here the "topic" is
plain world knowledge (capitals, landmarks, currencies, languages, continents), facts
written for this project (experiments/data/recall_facts.py).

Three formats per fact:
- ``free``: "The capital of France is" -> the answer's first token (" Paris"). Behaviour
  present when that token is the model's top-1 next token (score = its logit minus the
  best other token's logit > 0).
- ``choice`` (cloze multiple choice): the same stem, scored among four candidate answers
  (the answer and three answers of other facts of the category, options not shown);
  present when the answer's first token beats the three others' first tokens.
- ``mc`` (lettered multiple choice): "Question: ...?\nA. x\nB. y\nC. z\nD. w\nAnswer:"
  -> the correct letter; present when its logit beats the other three letters. Not in the
  default formats: SmolLM2-135M answers it at chance (129/516 = 25%; on a 90-question subset
  it got 12 of the 47 facts it recalls freely), so a "correct" answer there is a guess.
  The cloze format on the same subset: 79/90, all 47 freely recalled facts among them.

Latent selection ("latents selected for the topic"): attribution of each latent to the
behaviour score on the topic's prompts (the facts of ``categories``); when
``control_categories`` is set, minus the mean attribution on those control facts, so
latents that support every fact alike are not chosen.

User file rows: ``{"prompt", "answer"}`` (free recall: first token of the answer) or
``{"prompt", "answer", "choices": [...]}`` (the answer must be one of the choices; each
choice is scored by its first token, which must differ between choices); optional ``"id"``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.data import recall_facts as data
from experiments.settings import user_file
from experiments.settings.base import Setting, SettingConfig
from experiments.settings.sample import Sample
from guard.errors import ToolkitError

LETTERS = ("A", "B", "C", "D")
FORMATS = ("free", "choice", "mc")
DEFAULT_FORMATS = ("free", "choice")


@dataclass(frozen=True, kw_only=True)
class RecallSample(Sample):
    """A recall prompt: ``target`` is the answer's (first) token. With choices ("choice",
    "mc" and user rows with choices), ``choices`` are the candidate answers as shown or
    scored, ``choice_tokens`` the token each is scored by, ``foils`` the wrong ones."""

    answer: str
    format: str = "free"  # "free", "choice" or "mc"
    category: str = "user"
    choices: tuple[str, ...] = ()
    choice_tokens: tuple[int, ...] = ()

    @property
    def answer_token(self) -> int:
        return self.target


@dataclass(frozen=True)
class RecallConfig(SettingConfig):
    """Recall setting: ``categories`` (topic facts), ``formats`` ("free", "choice", "mc"),
    ``control_categories`` (facts whose attribution is subtracted in selection)."""

    name = "recall"
    n_latents: int = 50
    categories: tuple[str, ...] = data.CATEGORIES
    formats: tuple[str, ...] = DEFAULT_FORMATS
    control_categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("categories", "formats", "control_categories"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        bad = [c for c in self.categories + self.control_categories if c not in data.CATEGORIES]
        if bad:
            raise ToolkitError(f"setting {self.name!r}: unknown categories {bad}; valid: {list(data.CATEGORIES)}")
        if not self.categories:
            raise ToolkitError(f"setting {self.name!r}: categories is empty")
        if set(self.categories) & set(self.control_categories):
            raise ToolkitError(f"setting {self.name!r}: a category cannot be both topic and control")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ToolkitError(f"setting {self.name!r}: formats must be a non-empty subset of {FORMATS}, got {self.formats}")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def mc_prompt(question: str, choices: tuple[str, ...]) -> str:
    lines = [f"Question: {question}"]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


def free_sample(tokenizer, fact: data.Fact) -> RecallSample:
    prompt = data.free_prompt(fact)
    where = f"setting 'recall' fact {fact}"
    return RecallSample(
        id=f"recall/free/{fact.category}/{_slug(fact.subject)}", prompt=prompt,
        tokens=user_file.prompt_tokens(tokenizer, prompt, where),
        target=user_file.answer_tokens(tokenizer, prompt, fact.answer, where, "answer")[0],
        answer=fact.answer, format="free", category=fact.category,
    )


def first_token(tokenizer, text: str) -> int:
    return tokenizer.encode(" " + text, add_special_tokens=False)[0]


def distractors(tokenizer, fact: data.Fact, pool: list[str], seed: int, k: int = 3) -> list[str]:
    """``k`` other answers of the category whose first tokens differ from the answer's and from
    each other; drawn with a generator seeded by (seed, fact), so a fact's choices do not
    depend on which other facts are drawn."""
    rng = random.Random(f"{seed}/{fact.category}/{fact.subject}")
    used = {first_token(tokenizer, fact.answer)}
    out = []
    for other in rng.sample(sorted(set(pool) - {fact.answer}), len(set(pool) - {fact.answer})):
        token = first_token(tokenizer, other)
        if token not in used:
            used.add(token)
            out.append(other)
        if len(out) == k:
            return out
    raise ToolkitError(f"setting 'recall': fewer than {k} distinct distractors for {fact}")


def _shuffled_choices(fact: data.Fact, wrong: list[str], seed: int) -> list[str]:
    choices = [fact.answer, *wrong]
    random.Random(f"{seed}/order/{fact.category}/{fact.subject}").shuffle(choices)
    return choices


def choice_sample(tokenizer, fact: data.Fact, pool: list[str], seed: int) -> RecallSample:
    """The free-recall stem, scored among the answer and three distractors (not shown)."""
    choices = _shuffled_choices(fact, distractors(tokenizer, fact, pool, seed), seed)
    prompt = data.free_prompt(fact)
    return _choice_sample(tokenizer, prompt, fact.answer, fact.answer, choices,
                          f"recall/choice/{fact.category}/{_slug(fact.subject)}", f"setting 'recall' fact {fact}",
                          category=fact.category, format="choice")


def mc_sample(tokenizer, fact: data.Fact, pool: list[str], seed: int) -> RecallSample:
    """A lettered question with the answer and three distractors; the target is the letter."""
    choices = _shuffled_choices(fact, distractors(tokenizer, fact, pool, seed), seed)
    prompt = mc_prompt(data.question(fact), tuple(choices))
    return _choice_sample(tokenizer, prompt, fact.answer, LETTERS[choices.index(fact.answer)], LETTERS,
                          f"recall/mc/{fact.category}/{_slug(fact.subject)}", f"setting 'recall' fact {fact}",
                          category=fact.category, shown=tuple(choices), format="mc")


def _choice_sample(tokenizer, prompt: str, answer: str, answer_choice: str, choices, sample_id: str,
                   where: str, category: str = "user", shown: tuple[str, ...] = (),
                   format: str = "choice") -> RecallSample:
    tokens = [user_file.answer_tokens(tokenizer, prompt, c, where, "choices")[0] for c in choices]
    if len(set(tokens)) != len(tokens):
        raise ToolkitError(
            f"{where}: choices {list(choices)} do not all start with different tokens "
            f"({[tokenizer.decode([t]) for t in tokens]}); each choice is scored by its first token"
        )
    index = list(choices).index(answer_choice)
    return RecallSample(
        id=sample_id, prompt=prompt, tokens=user_file.prompt_tokens(tokenizer, prompt, where),
        target=tokens[index], foils=tuple(t for j, t in enumerate(tokens) if j != index),
        answer=answer, format=format, category=category, choices=shown or tuple(choices),
        choice_tokens=tuple(tokens),
    )


def fact_samples(tokenizer, facts: Sequence[data.Fact], seed: int = 0,
                 config: RecallConfig | None = None) -> list[RecallSample]:
    """Samples for each of ``facts`` in every format of ``config``, in order (distractors are drawn
    from all facts of the fact's category)."""
    config = config or RecallConfig()
    pools: dict[str, list[str]] = {}
    out: list[RecallSample] = []
    for fact in facts:
        pool = pools.setdefault(fact.category, [f.answer for f in data.facts((fact.category,))])
        if "free" in config.formats:
            out.append(free_sample(tokenizer, fact))
        if "choice" in config.formats:
            out.append(choice_sample(tokenizer, fact, pool, seed))
        if "mc" in config.formats:
            out.append(mc_sample(tokenizer, fact, pool, seed))
    return out


def recall_samples(tokenizer, n: int | None = None, seed: int = 0,
                   config: RecallConfig | None = None, categories: tuple[str, ...] | None = None) -> list[RecallSample]:
    """Samples for every fact of ``categories`` in every format of ``config``, shuffled by
    ``seed``; the first ``n`` (all when None)."""
    config = config or RecallConfig()
    categories = config.categories if categories is None else categories
    out = fact_samples(tokenizer, data.facts(tuple(categories)), seed, config)
    random.Random(seed).shuffle(out)
    return out if n is None else out[:n]


class RecallSetting(Setting):
    """The knowledge-suppression setting (see module docstring)."""

    config_cls = RecallConfig

    def generate(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        return recall_samples(tokenizer, n, seed, self.config)

    def control_samples(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        if not self.config.control_categories:
            return []
        return recall_samples(tokenizer, n, seed, self.config, categories=self.config.control_categories)

    def load_file(self, path: str | Path, tokenizer) -> list[Sample]:
        """Rows ``{"prompt", "answer"}`` or ``{"prompt", "answer", "choices"}``; errors name the line."""
        out = []
        for lineno, row in user_file.read_jsonl(path, "recall"):
            where = f"setting 'recall': {Path(path).name} line {lineno}"
            user_file.require(row, ("prompt", "answer"), where, {"prompt": str, "answer": str, "choices": list})
            prompt, answer = row["prompt"], row["answer"]
            sample_id = str(row.get("id", f"{Path(path).stem}:{lineno}"))
            tokens = user_file.prompt_tokens(tokenizer, prompt, where)
            if "choices" not in row:
                target = user_file.answer_tokens(tokenizer, prompt, answer, where, "answer")[0]
                out.append(RecallSample(id=sample_id, prompt=prompt, tokens=tokens, target=target,
                                        answer=answer, format="free"))
                continue
            choices = row["choices"]
            if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise ToolkitError(f"{where}: 'choices' must be a list of at least 2 strings, got {choices!r}")
            if answer not in choices:
                raise ToolkitError(f"{where}: 'answer' {answer!r} is not one of the choices {choices}")
            out.append(_choice_sample(tokenizer, prompt, answer, answer, choices, sample_id, where))
        user_file.unique_ids([s.id for s in out], "recall", path)
        return out
