"""Writes the labelled test set (corpus.jsonl, queries.jsonl, qrels.tsv) next to this file.

Each query is a paraphrase of exactly one document (grade 1), so a good sentence encoder ranks that
document first; hard negatives share the topic words but not the meaning, and templated filler makes the
corpus larger than 100 texts so that overlap@100 means something. Deterministic: run it to regenerate.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

PAIRS = [
    ("The museum is closed on Mondays for cleaning.", "Which day of the week can't I visit the museum?"),
    ("Our office moved to the third floor of the red brick building.", "Where is the office located now?"),
    ("Refunds are issued within fourteen days of receiving the returned item.",
     "How long does it take to get my money back after sending a product back?"),
    ("The bakery sells fresh sourdough bread every morning at seven.", "When can I buy freshly baked sourdough?"),
    ("Cats sleep between twelve and sixteen hours a day.", "How many hours per day do cats spend sleeping?"),
    ("The password must contain at least twelve characters and one digit.",
     "What are the requirements for a valid password?"),
    ("Water boils at a lower temperature at high altitude.", "Why does water boil faster up in the mountains?"),
    ("The train to the airport leaves every fifteen minutes from platform two.",
     "How often do trains go to the airport?"),
    ("Tomatoes grow best in full sun with regular watering.", "What conditions do tomato plants need?"),
    ("The library lends laptops to students for up to one week.", "Can students borrow a computer from the library?"),
    ("Our support team answers emails within one business day.", "How quickly will customer service reply to me?"),
    ("The bridge was closed after inspectors found cracks in a support beam.",
     "Why was the bridge shut down?"),
    ("Drinking coffee late in the day can make it harder to fall asleep.",
     "Does caffeine in the evening affect sleep?"),
    ("The company reported record profits in the last quarter.", "Did the firm earn more money than ever recently?"),
    ("Penguins cannot fly but they are excellent swimmers.", "Which birds swim well but are unable to fly?"),
    ("Backups of the database run every night at two in the morning.", "When is the database backed up?"),
    ("The concert was postponed because the singer lost her voice.", "Why did the show get delayed?"),
    ("Children under five travel free on city buses.", "Do small kids pay a fare on the bus?"),
    ("The recipe calls for two cups of flour and three eggs.", "What ingredients does the recipe need?"),
    ("Solar panels produce less electricity on cloudy days.", "Does overcast weather reduce solar power output?"),
    ("The hiking trail is steep and takes about four hours to complete.",
     "How long is the walk on the mountain path?"),
    ("Employees may work from home up to three days a week.", "How many remote work days are staff allowed?"),
    ("The vaccine must be stored in a freezer below minus twenty degrees.",
     "At what temperature should the vaccine be kept?"),
    ("Late fees are charged when a book is returned after the due date.",
     "What happens if I bring a library book back late?"),
    ("The river flooded the village after three days of heavy rain.", "What caused the town to be under water?"),
    ("This laptop's battery lasts around ten hours on a single charge.",
     "How long can the notebook run without plugging it in?"),
    ("The restaurant only accepts reservations by phone.", "How do I book a table at the restaurant?"),
    ("Regular exercise lowers the risk of heart disease.", "Is physical activity good for the heart?"),
    ("The software update fixes a bug that crashed the app on startup.",
     "What does the new version of the program repair?"),
    ("Snow chains are required on the mountain pass from November to March.",
     "When do drivers need tire chains on the pass?"),
]

HARD_NEGATIVES = [
    "The museum gift shop sells postcards and posters.",
    "The red brick building on the corner was built in 1910.",
    "Returned items must be in their original packaging.",
    "The bakery was founded by two brothers from Lyon.",
    "Dogs need to be walked at least twice a day.",
    "Never share your password with anyone, including support staff.",
    "Salt water freezes at a lower temperature than fresh water.",
    "Platform two is closed for repairs this weekend.",
    "Tomato sauce can be frozen for up to six months.",
    "The library's reading room is silent after six o'clock.",
    "Our support team is based in three countries.",
    "The old bridge was painted green in the summer.",
    "Tea contains less caffeine than coffee per cup.",
    "The company hired two hundred new engineers last year.",
    "Penguins live mostly in the southern hemisphere.",
    "The database stores customer orders and invoices.",
    "The concert hall seats two thousand people.",
    "Bus drivers take a break every four hours.",
    "Flour should be stored in a cool, dry place.",
    "Wind turbines are often built on hills or offshore.",
    "The hiking club meets on the first Sunday of each month.",
    "Employees receive twenty-five days of paid vacation.",
    "The freezer in the staff kitchen is cleaned every Friday.",
    "The library catalogue lists over a million titles.",
    "The river is popular with kayakers in the spring.",
    "The laptop comes with a two-year warranty.",
    "The restaurant's chef trained in Tokyo.",
    "Stretching before running may prevent injuries.",
    "The app is available in twelve languages.",
    "The mountain pass offers a view of three glaciers.",
]

SUBJECTS = ["The committee", "A local farmer", "The new manager", "Our neighbour", "The city council",
            "A young student", "The orchestra", "The night guard", "A travelling salesman", "The gardener"]
VERBS = ["painted", "repaired", "sold", "discussed", "photographed", "measured", "inspected", "decorated"]
OBJECTS = ["the old fence", "a wooden boat", "the village clock", "three paintings", "the parking lot",
           "an antique piano", "the school roof", "a vintage car", "the town fountain", "a blue bicycle"]
TIMES = ["last spring", "on a rainy Tuesday", "before the holidays", "in the early evening", "after lunch"]


def filler(n: int, seed: int = 7) -> list[str]:
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, TIMES))
    random.Random(seed).shuffle(combos)
    return [f"{s} {v} {o} {t}." for s, v, o, t in combos[:n]]


def main(folder: Path = Path(__file__).parent) -> None:
    docs = [(f"d{i:03d}", doc) for i, (doc, _) in enumerate(PAIRS)]
    docs += [(f"n{i:03d}", text) for i, text in enumerate(HARD_NEGATIVES)]
    docs += [(f"f{i:03d}", text) for i, text in enumerate(filler(160))]
    with (folder / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs)
    with (folder / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"q{i:03d}", "text": q}) + "\n" for i, (_, q) in enumerate(PAIRS))
    with (folder / "qrels.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"q{i:03d}\td{i:03d}\t1\n" for i in range(len(PAIRS)))


if __name__ == "__main__":
    main()
