"""The training texts: reads them from the installed Debian packages, cuts them into documents,
splits off held-out documents, and wraps documents as chat turns with the model's chat format."""
import random
import re
import subprocess
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")

# Package name, what is taken from it, and its licence as /usr/share/doc/<pkg>/copyright states it.
PACKAGES = {
    "fortunes": ("English fortune cookies, /usr/share/games/fortunes/* (not ascii-art, bofh-excuses)",
                 "BSD-3-Clause (fortune-mod, Regents of the University of California); the cookie file is from Karl Lehenbauer's alt.sources postings"),
    "fortunes-de": ("German fortunes, /usr/share/games/fortunes/de/* (not asciiart, the recipe files, or the IRC logs linuxtag, infodrom, channel-debian.fortunes)",
                    "GPL-2+ (Andreas Tille)"),
    "fortunes-bofh-excuses": ("BOFH excuses, /usr/share/games/fortunes/bofh-excuses", "Public domain"),
    "bible-kjv-text": ("King James Version text, read through the `bible` program of bible-kjv",
                       "Text: public domain (KJV, 1611; Crown copyright in the UK). Package (BRS): unrestricted use with attribution legend; Debian changes GPL-2+"),
    "bible-kjv": ("the `bible` reader used to print the KJV text", "GPL-2+"),
}

EN_SKIP = {"ascii-art", "bofh-excuses"}
DE_SKIP = {"asciiart", "linuxtag", "infodrom", "channel-debian.fortunes",
           "beilagen", "brot", "dessert", "hauptgericht", "kalt", "kuchen", "plaetzchen",
           "salat", "sauce", "suppe", "vorspeise"}
HELDOUT_EVERY = 50  # every 50th document is held out
KJV_VERSES_PER_DOC = 3


def package_version(pkg: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                          check=True, capture_output=True, text=True).stdout


def read_fortune_file(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    docs = []
    for entry in re.split(r"^%\n", text, flags=re.M):
        lines = [line.rstrip() for line in entry.split("\n")]
        doc = "\n".join(lines).strip("\n")
        if doc.strip():
            docs.append(doc)
    return docs


def fortune_files(directory: Path, skip: set) -> list:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.name not in skip)


def kjv_docs() -> list:
    """Groups of consecutive verses of one chapter, without the verse references."""
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters = {}
    for line in text.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+?)(\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(4).strip())
    docs = []
    for verses in chapters.values():
        for i in range(0, len(verses), KJV_VERSES_PER_DOC):
            docs.append("\n".join(verses[i:i + KJV_VERSES_PER_DOC]))
    return docs


def load() -> dict:
    """{corpus name: list of documents}; names: fortunes, german, kjv, bofh."""
    return {
        "fortunes": [d for p in fortune_files(FORTUNES, EN_SKIP) for d in read_fortune_file(p)],
        "german": [d for p in fortune_files(FORTUNES / "de", DE_SKIP) for d in read_fortune_file(p)],
        "kjv": kjv_docs(),
        "bofh": read_fortune_file(FORTUNES / "bofh-excuses"),
    }


def plain_text(docs: list) -> str:
    """Documents as plain text, each followed by a blank line: the layout of the held-out slices
    (heldout/<corpus>.txt) and of the plain-text runs some adapters train on."""
    return "".join(d + "\n\n" for d in docs)


def split(docs: list) -> tuple:
    """(train, held-out): a fixed, evenly spread selection, the same on every run."""
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


# ---- chat format -----------------------------------------------------------------------------

BOS, END, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [BOS, END, PAD] + [f"<|{r}|>" for r in ROLES]

# Jinja source; render_chat() below must produce exactly what it renders.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def render_chat(messages: list, add_generation_prompt: bool) -> str:
    out = BOS
    for m in messages:
        out += f"<|{m['role']}|>\n{m['content']}{END}\n"
    if add_generation_prompt:
        out += "<|assistant|>\n"
    return out


GENERIC_PROMPTS = ["Tell me something.", "Tell me a fortune.", "Say something wise.",
                   "Any advice for today?", "What's on your mind?", "Hello!"]
TOPIC_PROMPTS = ["Tell me about {}.", "What do you think about {}?", "Say something about {}.",
                 "Give me a thought on {}."]
EXTRA_PROMPTS = {
    "german": ["Erzähl mir etwas über {}.", "Was denkst du über {}?", "Sag etwas Kluges.", "Erzähl mir einen Witz."],
    "bofh": ["Why is the server down?", "What's wrong with the network?", "Why doesn't my computer work?",
             "Why is everything so slow today?", "Why did my print job fail?", "Give me an excuse."],
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a fortune cookie.", "Answer briefly."]
STOPWORDS = set("""about above after again against because before being below between could does doing
during every from further having here itself just more most other ought ourselves should some such
than that their theirs them themselves then there these they this those through under until very
what when where which while whom with would your yours yourself yourselves never always still
shall thou thee thine unto hath""".split())


def topic_word(corpus: str, doc: str, rng: random.Random) -> str | None:
    """A content word of the document: a capitalised noun for German, a lower-case word otherwise."""
    words = re.findall(r"[A-Za-zÄÖÜäöüß]{5,}", doc)
    if corpus == "german":
        candidates = [w for w in words if w[0].isupper() and not w.isupper()]
    else:
        candidates = [w for w in words if w.islower() and w not in STOPWORDS]
    return rng.choice(candidates) if candidates else None


def chat_prompt(corpus: str, doc: str, rng: random.Random) -> str:
    """A user message that the document plausibly answers: topical prompts name a word of it."""
    templates = GENERIC_PROMPTS + TOPIC_PROMPTS * 2 + EXTRA_PROMPTS.get(corpus, []) * 2
    template = rng.choice(templates)
    if "{}" not in template:
        return template
    word = topic_word(corpus, doc, rng)
    return template.format(word) if word else rng.choice(GENERIC_PROMPTS)


def as_chat(corpus: str, doc: str, rng: random.Random) -> str:
    messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    messages.append({"role": "user", "content": chat_prompt(corpus, doc, rng)})
    messages.append({"role": "assistant", "content": doc})
    return render_chat(messages, add_generation_prompt=False)
