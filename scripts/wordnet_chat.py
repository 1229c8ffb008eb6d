"""Write Debian's WordNet 3.0 glosses as "define the word" chats (JSONL), split into train and held-out.

    apt-get install -y wordnet-base
    python scripts/wordnet_chat.py --out data/wordnet-chat      # -> train.jsonl, heldout.jsonl

Each synset with a gloss becomes one chat: a user turn asking for the word's meaning (one of a few phrasings,
picked by a fixed hash so the output is deterministic) and an assistant turn "WORD (POS): DEFINITION." plus its
example sentence when WordNet has one. Every HELDOUT_EVERY-th synset (file order) is held out. WordNet is
public-domain-like (the WordNet 3.0 license allows use and redistribution with its notice).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zlib
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
HELDOUT_EVERY = 20
QUESTIONS = ("Define the word \"{w}\".", "What does \"{w}\" mean?", "What is the meaning of the word \"{w}\"?",
             "Give me a short definition of \"{w}\".")


def synsets(wordnet_dir: Path = WORDNET_DIR):
    """(word, part of speech, definition, first example or None) per synset of data.{noun,verb,adj,adv}."""
    if not (wordnet_dir / "data.noun").is_file():
        sys.exit(f"error: {wordnet_dir}/data.noun is missing; install Debian's wordnet-base "
                 "(apt-get install -y wordnet-base) or pass --wordnet-dir")
    for pos in POS_NAMES:
        for line in (wordnet_dir / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            head, sep, gloss = line.partition(" | ")
            if line.startswith("  ") or not sep:  # the license header, or a synset without a gloss
                continue
            word = re.sub(r"\(.*\)$", "", head.split()[4]).replace("_", " ")  # "big(a)" -> "big"
            parts = [part.strip() for part in gloss.strip().split(";") if part.strip()]
            definition = "; ".join(part for part in parts if not part.startswith('"'))
            examples = [part.strip('"').strip() for part in parts if part.startswith('"') and part.strip('"').strip()]
            if definition:
                yield word, POS_NAMES[pos], definition, (examples[0] if examples else None)


def chat(word: str, pos: str, definition: str, example: str | None) -> dict:
    question = QUESTIONS[zlib.crc32(word.encode()) % len(QUESTIONS)].format(w=word)
    answer = f"{word} ({pos}): {definition}."
    if example:
        answer += f" For example: \"{example[0].upper() + example[1:]}\""
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory to write train.jsonl and heldout.jsonl into")
    ap.add_argument("--wordnet-dir", default=str(WORDNET_DIR))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "heldout": 0}
    with open(out / "train.jsonl", "w", encoding="utf-8") as train, \
            open(out / "heldout.jsonl", "w", encoding="utf-8") as heldout:
        for i, entry in enumerate(synsets(Path(args.wordnet_dir))):
            split = "heldout" if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"
            (heldout if split == "heldout" else train).write(json.dumps(chat(*entry)) + "\n")
            counts[split] += 1
    print(f"{out}: {counts['train']} train chats, {counts['heldout']} held-out chats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
