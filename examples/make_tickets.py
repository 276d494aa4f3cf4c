"""Write a small 4-class text dataset of made-up customer-support messages, for trying pcv-train on
labels of your own: `python examples/make_tickets.py DIR` writes DIR/train.jsonl (2,000 messages)
and DIR/test.jsonl (400), labels billing / shipping / technical / account, seeded (the same files
every time). Each message mixes phrases of its own topic with neutral ones, and one in five also
carries a phrase of another topic, so that a classifier has to weigh them; messages are 30-190 bytes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS = {
    "billing": ["I was charged twice this month", "the invoice shows the wrong amount", "please refund my last payment",
                "my card was declined at checkout", "why did my subscription price go up", "I need a copy of my receipt",
                "the discount code was not applied", "cancel the automatic renewal fee"],
    "shipping": ["my parcel has not arrived yet", "the tracking number does not work", "the box came damaged",
                 "can you deliver to a different address", "the courier left it at the wrong door",
                 "how long does express delivery take", "part of my order is missing", "the package is stuck in customs"],
    "technical": ["the app crashes when I open it", "I get an error after the update", "the page will not load",
                  "the device keeps restarting", "sync stopped working on my phone", "the screen freezes during setup",
                  "bluetooth will not connect", "the download fails halfway"],
    "account": ["I cannot log in to my account", "please reset my password", "how do I change my email address",
                "my account was locked", "I want to delete my profile", "two-factor codes never reach me",
                "someone else is using my account", "how do I add a second user"],
}
NEUTRAL = ["Hello,", "Hi team,", "Good morning.", "Thanks in advance.", "This is urgent.", "I tried again today.",
           "Could you help?", "Regards, Sam", "It happened yesterday as well.", "I have been a customer for years.",
           "Please get back to me soon.", "Not sure what else to do."]


def message(rng: random.Random, topic: str) -> str:
    parts = [rng.choice(NEUTRAL)]
    parts += [rng.choice(TOPICS[topic]) + rng.choice([".", "!", " and", ","]) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.2:  # a distractor from another topic
        parts.append("also " + rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != topic])]) + ".")
    parts += [rng.choice(NEUTRAL) for _ in range(rng.randint(0, 2))]
    return " ".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python examples/make_tickets.py DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for name, n in (("train", 2000), ("test", 400)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                topic = rng.choice(sorted(TOPICS))
                f.write(json.dumps({"id": f"{name}-{i}", "text": message(rng, topic), "label": topic}) + "\n")
    print(f"wrote {out}/train.jsonl (2,000) and {out}/test.jsonl (400)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
