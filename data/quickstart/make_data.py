"""Regenerate the quickstart chat dataset: `python data/quickstart/make_data.py`.

Three small, learnable tasks in the chat `messages` format, some with a system prompt and some
multi-turn, so that a tiny model visibly improves over its base in a few CPU minutes:
sentiment labels, country capitals, and word reversal. sharegpt.jsonl holds a fourth task
(spelling a word in capitals) in the ShareGPT format, the second source of the
quickstart_mixture recipe.
"""

import json
import random
from pathlib import Path

POSITIVE = ["love", "great", "wonderful", "excellent", "happy", "fantastic", "delightful", "superb"]
NEGATIVE = ["hate", "awful", "terrible", "boring", "sad", "horrible", "dreadful", "poor"]
THINGS = ["movie", "book", "meal", "song", "trip", "game", "show", "hotel", "phone", "class", "album", "park",
          "cafe", "laptop", "concert", "museum", "novel", "podcast", "course", "train ride"]
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Canada": "Ottawa", "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
    "Greece": "Athens", "Chile": "Santiago", "Cuba": "Havana", "Nepal": "Kathmandu", "Poland": "Warsaw",
}
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "honey", "lemon", "storm"]
SYSTEMS = [None, None, "You are a concise assistant.", "Answer with as few words as possible."]


def sentiment(rng):
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    text = f"I {word} this {rng.choice(THINGS)}." if word in ("love", "hate") else f"This {rng.choice(THINGS)} is {word}."
    return f"Sentiment of: {text}", "positive" if positive else "negative"


def capital(rng):
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", CAPITALS[country]


def reverse(rng):
    word = rng.choice(WORDS)
    return f"Reverse the word: {word}", word[::-1]


def make_row(rng):
    tasks = [sentiment, capital, reverse]
    messages = []
    system = rng.choice(SYSTEMS)
    if system:
        messages.append({"role": "system", "content": system})
    for _ in range(1 if rng.random() < 0.8 else 2):  # one in five rows is multi-turn
        question, answer = rng.choice(tasks)(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def main():
    rng = random.Random(1234)
    out = Path(__file__).parent
    seen = set()  # every row is unique, and eval rows never appear in train
    for name, count in (("train.jsonl", 320), ("eval.jsonl", 48)):
        rows = []
        while len(rows) < count:
            row = json.dumps(make_row(rng))
            if row not in seen:
                seen.add(row)
                rows.append(row)
        (out / name).write_text("".join(r + "\n" for r in rows))
    shouting = random.Random(99)  # its own generator: train.jsonl and eval.jsonl stay as they were
    words = sorted(set(WORDS + [t for t in THINGS if " " not in t]))
    rows = [{"conversations": [{"from": "human", "value": f"Write in capitals: {word}"}, {"from": "gpt", "value": word.upper()}]}
            for word in shouting.sample(words, len(words))]
    (out / "sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
