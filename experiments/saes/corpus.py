"""An offline training corpus: Debian text packages plus chat-formatted exchanges.

General English comes from Debian packages fetched with ``apt-get download`` and unpacked
with ``dpkg-deb -x`` (nothing is installed on the system): the Python 3.11 documentation,
WordNet glosses and the fortunes files. Chat and refusal contexts come from ChatML
exchanges built from our own templates: harmful requests (AdvBench/HarmBench, read from
their packages) answered with refusals or left at the assistant turn, and harmless
dictionary questions answered from WordNet glosses. Documents are split into train and held-out by a hash of
their id, so held-out text is never trained on.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from experiments.data.refusal import load_advbench, load_harmbench
from experiments.subject.chat import DEFAULT_SYSTEM, chat_prompt, chat_transcript
from experiments.subject.smollm2 import cache_dir

DEBIAN_PACKAGES = ("python3.11-doc", "wordnet-base", "fortunes")
HELDOUT_FRACTION = 0.03
SAFETY_SYSTEM = (
    "You are a helpful assistant. You must refuse requests that could cause harm, "
    "such as instructions for violence, weapons, crime, hacking or self-harm."
)
# Refusal replies written by us, in the styles the subject itself uses when it refuses.
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I'm unable to assist with that request.",
    "I can't help with that. It could cause real harm to people.",
    "Sorry, I can't provide that. If you need help with something else, I'm here.",
    "I'm not able to help with this request because it could be used to hurt someone.",
    "I cannot assist with that. Is there something else I can help you with?",
)


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str

    @property
    def heldout(self) -> bool:
        digest = hashlib.sha256(self.id.encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION


def corpus_dir() -> Path:
    return cache_dir() / "corpus"


def fetch_debian(package: str, root: Path | None = None) -> Path:
    """Download and unpack one Debian package into the cache (no system install)."""
    root = root or corpus_dir() / "debian"
    target = root / package
    if (target / ".done").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=root, check=True, capture_output=True)
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"apt-get download {package} produced no .deb in {root}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True)
    (target / ".done").write_text(debs[-1].name)
    return target


def _python_docs(root: Path) -> Iterator[Document]:
    for page in sorted((root / "usr/share/doc/python3.11/html").rglob("*.html")):
        raw = page.read_text(errors="ignore")
        body = re.search(r'<div class="body" role="main">(.*?)<div class="sphinxsidebar"', raw, re.S)
        text = body.group(1) if body else raw
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", text, flags=re.S)
        text = html.unescape(re.sub(r"<[^>]+>", "", text)).replace("\u00b6", "")
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
        for i, part in enumerate(_chunks(text.split("\n\n"), 3000)):
            yield Document(f"pydoc:{page.name}:{i}", "python3.11-doc", part)


def _wordnet_glosses(root: Path) -> Iterator[tuple[str, str]]:
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (root / f"usr/share/wordnet/data.{pos}").read_text(errors="ignore").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            fields, gloss = line.split("|", 1)
            lemma = fields.split()[4].replace("_", " ")
            yield lemma, gloss.strip()


def _wordnet_docs(root: Path) -> Iterator[Document]:
    entries = [f"{lemma}: {gloss}" for lemma, gloss in _wordnet_glosses(root)]
    for i, part in enumerate(_chunks(entries, 2500, sep="\n")):
        yield Document(f"wordnet:{i}", "wordnet-base", part)


def _fortune_docs(root: Path) -> Iterator[Document]:
    folder = root / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes and .u8 links
        items = [f.strip() for f in path.read_text(errors="ignore").split("\n%\n") if f.strip()]
        for i, part in enumerate(_chunks(items, 2500, sep="\n\n")):
            yield Document(f"fortune:{path.name}:{i}", "fortunes", part)


def _chunks(items: list[str], max_chars: int, sep: str = "\n\n") -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for item in items:
        if buf and size + len(item) > max_chars:
            yield sep.join(buf)
            buf, size = [], 0
        buf.append(item)
        size += len(item) + len(sep)
    if buf:
        yield sep.join(buf)


def _harmful_requests() -> list[str]:
    return [*load_advbench().prompts, *load_harmbench().prompts]


def _chat_docs(wordnet_root: Path, seed: int) -> Iterator[Document]:
    rng = random.Random(seed)
    for i, request in enumerate(_harmful_requests()):
        system = SAFETY_SYSTEM if i % 2 else DEFAULT_SYSTEM
        yield Document(f"chat:refuse:{i}", "chat-refusal",
                       chat_transcript(request, rng.choice(REFUSALS), system=system))
        yield Document(f"chat:harmful-prompt:{i}", "chat-harmful-prompt", chat_prompt(request))
    glosses = list(_wordnet_glosses(wordnet_root))
    rng.shuffle(glosses)
    for i, (lemma, gloss) in enumerate(glosses[:6000]):
        definition = gloss.split(";")[0].strip()
        yield Document(f"chat:define:{i}", "chat-define",
                       chat_transcript(f"What does \"{lemma}\" mean?", f"\"{lemma}\" means {definition}."))


def build_documents(seed: int = 0) -> list[Document]:
    """All documents, in a fixed order (the order collection resumes from)."""
    roots = {pkg: fetch_debian(pkg) for pkg in DEBIAN_PACKAGES}
    docs = [
        *_python_docs(roots["python3.11-doc"]),
        *_wordnet_docs(roots["wordnet-base"]),
        *_fortune_docs(roots["fortunes"]),
        *_chat_docs(roots["wordnet-base"], seed),
    ]
    random.Random(seed).shuffle(docs)
    return docs


def composition(docs: list[Document]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = out.setdefault(doc.source, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(doc.text)
    return out


def write_heldout_text(docs: list[Document], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for doc in docs:
            if doc.heldout:
                f.write(json.dumps({"id": doc.id, "source": doc.source, "text": doc.text}) + "\n")
    return path
