"""A deterministic offline task for real pretrained models: true/false statements about English words.

Each question asks whether a common English word belongs to a category ("is a mango a kind of fruit"), with
the category's one-sentence definition as the passage, in BoolQ's schema (question, passage, answer) and scored
with BoolQ's prompt (" False" / " True"). Half of the statements are true. The train split is small (256) and a
fraction of its labels is flipped (15%), so a finetune that memorises its train set becomes overconfident; the
validation and test splits are clean, so their best accuracy is 100%.

Why this task: a small instruction-tuned model (SmolLM2-135M-Instruct, `builtin:smollm2-135m`) knows the words
but answers such questions barely above chance zero-shot (it says "True" to most), and LoRA finetuning teaches it
the format and the categories within a few hundred steps on a CPU. A tiny random model cannot learn it: the
words need pretrained knowledge.
"""

from __future__ import annotations

from ..choice.example import ChoiceExample
from .base import TRAIN_VALIDATION_TEST, Task, require, split_random
from .boolq import ANSWERS

CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fruit": ("Fruits are the sweet, seed-bearing parts of plants that people eat.",
              ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon", "orange",
               "kiwi", "apricot", "papaya", "pineapple", "strawberry", "raspberry", "blueberry", "coconut", "fig",
               "lime", "watermelon", "nectarine", "pomegranate", "guava")),
    "vegetable": ("Vegetables are plant parts eaten as part of a savoury meal.",
                  ("carrot", "potato", "onion", "cabbage", "spinach", "lettuce", "broccoli", "celery", "cucumber",
                   "pea", "bean", "radish", "turnip", "garlic", "leek", "beetroot", "cauliflower", "pumpkin",
                   "zucchini", "asparagus", "kale", "eggplant", "parsnip", "artichoke", "corn")),
    "animal": ("Animals are living creatures that move and feed on other organisms.",
               ("dog", "cat", "horse", "tiger", "rabbit", "mouse", "sheep", "goat", "wolf", "bear", "lion",
                "elephant", "monkey", "giraffe", "zebra", "deer", "fox", "camel", "donkey", "squirrel", "kangaroo",
                "panda", "leopard", "otter", "beaver")),
    "tool": ("Tools are objects people hold in their hands to make or repair things.",
             ("hammer", "saw", "drill", "wrench", "screwdriver", "pliers", "chisel", "axe", "shovel", "rake",
              "spade", "file", "clamp", "mallet", "crowbar", "trowel", "ladder", "level", "scissors", "knife", "hoe",
              "sickle", "awl", "vise", "tape")),
    "instrument": ("Musical instruments are objects used to make music.",
                   ("piano", "violin", "drum", "flute", "guitar", "harp", "trumpet", "cello", "oboe", "banjo",
                    "clarinet", "saxophone", "trombone", "tuba", "organ", "accordion", "harmonica", "ukulele",
                    "viola", "bassoon", "xylophone", "tambourine", "mandolin", "bagpipes", "sitar")),
    "vehicle": ("Vehicles are machines that carry people or goods from place to place.",
                ("car", "bus", "train", "truck", "boat", "plane", "bicycle", "ship", "tram", "van", "motorcycle",
                 "taxi", "helicopter", "scooter", "tractor", "ferry", "submarine", "canoe", "yacht", "jeep",
                 "ambulance", "lorry", "rocket", "sled", "wagon")),
    "clothing": ("Clothing is what people wear on their bodies.",
                 ("shirt", "jacket", "coat", "sweater", "dress", "skirt", "trousers", "jeans", "sock", "shoe", "boot",
                  "hat", "scarf", "glove", "belt", "tie", "vest", "blouse", "hoodie", "sandal", "cap", "shorts",
                  "pajamas", "uniform", "apron")),
    "furniture": ("Furniture is the movable equipment of a room, such as things to sit or lie on.",
                  ("chair", "table", "sofa", "bed", "desk", "wardrobe", "shelf", "stool", "bench", "cabinet",
                   "dresser", "couch", "bookcase", "armchair", "cupboard", "crib", "mattress", "ottoman", "hammock",
                   "recliner", "sideboard", "nightstand", "futon", "cot", "drawer")),
    "country": ("A country is a nation with its own government and territory.",
                ("France", "Germany", "Spain", "Italy", "Japan", "China", "India", "Brazil", "Canada", "Mexico",
                 "Egypt", "Kenya", "Norway", "Sweden", "Poland", "Greece", "Turkey", "Peru", "Chile", "Argentina",
                 "Australia", "Russia", "Vietnam", "Thailand", "Portugal")),
    "color": ("Colors are what the eye sees when light is reflected, such as the shade of paint.",
              ("red", "blue", "green", "yellow", "purple", "black", "white", "brown", "pink", "gray", "orange",
               "violet", "indigo", "crimson", "turquoise", "beige", "maroon", "scarlet", "navy", "teal", "magenta",
               "lavender", "olive", "gold", "silver")),
}  # fmt: skip
# Short on purpose: a step of a 135M model on 2 CPU cores costs about its prompt length.
PROMPT = "True or False: {question}? Answer:"
TEMPLATES = (
    "is {article} {word} a kind of {category}",
    "is {word} an example of {category_article} {category}",
    "can {article} {word} be called {category_article} {category}",
)
SPLIT_SIZES = {"train": 256, "validation": 200, "test": 300}
LABEL_NOISE = 0.15  # train split only


def _article(word: str) -> str:
    if word[0].isupper():  # a proper noun (a country): "is France a kind of country"
        return ""
    return "an" if word[0] in "aeiou" else "a"


def wordfacts_records(split: str, num_examples: int | None = None, seed: int = 0,
                      label_noise: float = LABEL_NOISE) -> list[dict]:  # fmt: skip
    """The `split` as BoolQ-schema records (id, question, passage, answer) plus `label_flipped`; labels flipped in
    train only."""
    rng = split_random("wordfacts", split, SPLIT_SIZES, seed, label_noise)
    names = list(CATEGORIES)
    records = []
    for index in range(SPLIT_SIZES[split] if num_examples is None else num_examples):
        word_category = rng.choice(names)
        word = rng.choice(CATEGORIES[word_category][1])
        true = rng.random() < 0.5
        category = word_category if true else rng.choice([name for name in names if name != word_category])
        template = rng.choice(TEMPLATES)
        # Drawn whatever the split, so the questions do not depend on the noise level.
        flip = rng.random() < label_noise
        records.append(
            {
                "id": f"wordfacts-{split}-{index}",
                "question": " ".join(
                    template.format(
                        article=_article(word), word=word, category=category, category_article=_article(category)
                    ).split()
                ),
                "passage": CATEGORIES[category][0],
                # Membership, not the draw: a word in two lists (orange) is true of both categories.
                "answer": (word in CATEGORIES[category][1]) != (flip and split == "train"),
                # Whether `answer` is the flipped one (train only): the ground truth of mislabel detection.
                "label_flipped": flip and split == "train",
            }
        )
    return records


def wordfacts_clean_records(split: str, num_examples: int | None = None, seed: int = 0) -> list[dict]:
    """wordfacts with clean train labels: the same questions in every split, none of the answers flipped."""
    return wordfacts_records(split, num_examples, seed, label_noise=0.0)


def wordfacts_example(record: dict) -> ChoiceExample:
    """The statement as a short True/False prompt (the passage, the category's definition, is not shown)."""
    require(record, "question")
    answer = record.get("answer")
    question = record["question"][:1].upper() + record["question"][1:]
    return ChoiceExample(id="", prompt=PROMPT.format(question=question), answers=ANSWERS,
                         gold=-1 if answer is None else int(answer))  # fmt: skip


TASKS = (
    Task("wordfacts", wordfacts_example, splits=TRAIN_VALIDATION_TEST,
         family="boolq", id_field="id", generator=wordfacts_records, sizable=True,
         description="Built-in offline true/false statements about English words (BoolQ schema), "
                     "256 train questions with 15% flipped labels; for real pretrained models."),
    Task("wordfacts_clean", wordfacts_example, splits=TRAIN_VALIDATION_TEST,
         family="boolq", id_field="id", generator=wordfacts_clean_records, sizable=True,
         description="wordfacts with clean train labels (the same questions, none flipped): the regime where a "
                     "finetune ends overconfident, the quickstart's."),
)  # fmt: skip
