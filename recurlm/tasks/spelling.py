"""Spelling bee (nanochat's): 'How many R are in strawberry?', answered by spelling the word out and counting.

Words come from a list shipped here (nothing is downloaded); the letter asked about is in the word two times
out of three. Difficulty: 1 for words of up to 5 letters, 2 for 6-8, 3 for longer.
"""

import random
import re

from recurlm.tasks import Example, Task, extract_answer
from recurlm.tasks.reasoning import trace

WORDS = """
apple banana cherry grape lemon mango melon orange peach pear plum berry strawberry raspberry blueberry
water river ocean island mountain valley forest desert garden flower tree leaf branch root seed grass
house window door kitchen bedroom table chair pillow blanket mirror bottle kettle spoon fork knife plate
school teacher student pencil paper letter number answer question problem lesson library book story
happy sunny rainy windy cloudy summer winter spring autumn morning evening tonight yesterday tomorrow
animal rabbit turtle monkey giraffe elephant kangaroo dolphin penguin squirrel butterfly mosquito parrot
coffee cookie butter bread cheese pepper tomato potato carrot onion garlic noodle sugar honey dinner
computer keyboard program language machine letterbox balloon message village bicycle airplane rocket
committee occurrence necessary accommodate embarrass mississippi bookkeeper address success coffee
little middle puzzle bubble giggle pepperoni tennessee assessment possession balloon vacuum broccoli
""".split()
WORDS = sorted(set(WORDS))


class SpellingBee(Task):
    name = "spelling_bee"
    difficulties = (1, 2, 3)
    max_new_tokens = 96  # a spelt-out 13-letter word and its count
    prompt_template = "<INST>{}</INST>"

    def sample(self, rng: random.Random, difficulty: int) -> Example:
        pool = [w for w in WORDS if (len(w) <= 5, 6 <= len(w) <= 8, len(w) >= 9)[difficulty - 1]]
        word = rng.choice(pool)
        letter = rng.choice(word) if rng.random() < 2 / 3 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        shown = letter.upper() if rng.random() < 0.5 else letter
        where = [str(i + 1) for i, c in enumerate(word) if c == letter]
        count = len(where)
        steps = [",".join(word), f"{letter} at {', '.join(where)}" if where else f"no {letter}"]
        question = f"How many {shown} are in {word}?"
        prompt = self.prompt_template.format(question)
        # a chat model (nanochat's) is asked the bare question and answers '#### N'
        return Example(prompt, str(count), trace(steps, count), self.name, difficulty, meta={"chat": question})

    def extract(self, text: str) -> str:
        m = re.search(r"#### (-?[0-9.,]+)", text)
        return m.group(1).replace(",", "") if m else extract_answer(text)
