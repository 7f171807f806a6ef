"""Many ways to ask the reasoning suite's questions, as people type them.

A model trained on one template per task learns the template: MiniAxion's shipped checkpoint scored 94.8% on its
own phrasing and 28.8% on other wordings of the same problems. Each question is a `Question` (a kind and its
numbers), phrased by one of several frames, with the slips people make when typing (all lowercase, no final
punctuation, no spaces around operators or after commas). Two disjoint sets of frames:
- `varied`: what training draws from;
- `wide`: `varied` and as many frames again, with word problems put together from an opening, one of many verbs of
  gaining or losing, and a question (some questions fit either, so only the verb tells);
- `crossed`: `wide`, and settings that two tasks share, asked with either task's question ("Take 7 and 4. Which is
  larger?" / "Take 7 and 4. What is their sum?", a list to continue or to sort), so that only the question's words
  tell the task, as `wide`'s word problems do with verbs;
- `held_out`: frames, names and objects no training example uses, kept to check that the model learned the task.
`fixed` is each task's one canonical wording. Splits are drawn by the canonical question, so a test problem is
never trained in another wording. Training can also swap a word that carries no cue for a made-up one
(`nonce_share`), so that a word it never saw is no reason to change the answer.
"""

import random
import re
from collections import Counter
from dataclasses import dataclass, field

WORDINGS = ("fixed", "varied", "wide", "crossed", "held_out")
TRAINED = ("varied", "wide", "crossed")
# `phrase`'s shares, as stages name them
SHARES = ("canonical_share", "nonce_share", "nonce_verbs", "nonce_frames", "nonce_shapes", "nonce_comparisons",
          "nonce_stories")  # fmt: skip


@dataclass
class Question:
    kind: str  # a key of FRAMES
    fields: dict = field(default_factory=dict)


OPS = {"+": ["+", "plus"], "-": ["-", "minus"], "*": ["*", "times", "x", "multiplied by"]}
VERBS = {"+": "add", "-": "subtract"}

# Each kind: (canonical, frames training uses, held-out frames). {x} is the expression written with operator words.
FRAMES = {
    "arithmetic": (
        "What is {a} {op} {b}?",
        [
            "What is {x}?",
            "Calculate {x}.",
            "{x} = ?",
            "{x} =",
            "{x}",
            "How much is {x}?",
            "Work out {x}.",
            "Solve {x}.",
            "Tell me what {x} is.",
            "Can you work out {x}?",
            "Find {x}.",
            "What does {x} make?",
            "{x}?",
            "Quick one: what is {x}?",
            "Please work out {x}.",
            "Give me {x}.",
            "Result of {x}?",
            "What is the answer to {x}?",
            "How much does {x} come to?",
            "What would {x} be?",
            "Could you calculate {x}?",
            "Answer this: {x}",
            "{phrase}",  # twice: the sentence forms keep about the share they had among the 13 frames before
            "{phrase}",
        ],
        [
            "What's {x}?",
            "Compute {x}.",
            "Evaluate {x}.",
            "Please calculate {x}.",
            "What do you get for {x}?",
            "{x} equals what?",
            "I need the answer to {x}.",
            "Could you tell me {x}?",
            "{x} comes to?",
            "What's the value of {x}?",
            "Mind solving {x}?",
            "Need help: {x}",
            "{phrase}",
        ],
    ),
    "two_step": (
        "What is ({a} {op1} {b}) {op2} {c}?",
        [
            "What is {x}?",
            "Calculate {x}.",
            "{x} = ?",
            "{x}",
            "How much is {x}?",
            "Work out {x}.",
            "Find {x}.",
            "{x}?",
            "What does {x} come to?",
            "Please work out {x}.",
            "Result of {x}?",
            "Could you calculate {x}?",
            "What is the value of {x}?",
            "Start with {a}, {verb1} {b}, then {verb2} {c}.",
            "Begin at {a}. {verb1} {b}, and then {verb2} {c}. What is the result?",
            "If you start with {a}, {verb1} {b} and then {verb2} {c}, what number do you end up with?",
        ],
        [
            "What's {x}?",
            "Compute {x}.",
            "Evaluate {x}.",
            "{x} equals what?",
            "Take {a}, {verb1} {b} and {verb2} {c}. What do you get?",
            "Could you tell me {x}?",
            "What's the value of {x}?",
            "{x} comes to?",
            "Mind solving {x}?",
            "{a} to start, {verb1} {b}, next {verb2} {c}. Answer?",
        ],
    ),
    "even_odd": (
        "Is {n} even or odd?",
        [
            "Is {n} even or odd?",
            "Is {n} odd or even?",
            "Even or odd: {n}",
            "{n}: even or odd?",
            "Is the number {n} even or odd?",
            "Tell me if {n} is even or odd.",
            "Odd or even? {n}",
            "Is {n} an odd number or an even number?",
            "{n} is even or odd?",
            "Say whether {n} is even or odd.",
            "What is {n}, even or odd?",
            "Even or odd? {n}",
            "Is {n} even or is {n} odd?",
            "Parity of {n}: even or odd?",
        ],
        [
            "Would you call {n} even or odd?",
            "Decide whether {n} is odd or even.",
            "Is {n} even, or is it odd?",
            "{n} - odd or even?",
            "Check if {n} is even or odd.",
            "{n}, is it even or odd?",
            "Classify {n} as even or odd.",
            "Which is {n}: odd or even?",
            "Tell me whether {n} is odd or even.",
            "Even number or odd number: {n}?",
        ],
    ),
    "comparison": (
        "Which is larger: {a} or {b}?",
        [
            "Which is larger: {a} or {b}?",
            "Which is bigger, {a} or {b}?",
            "Which is greater: {a} or {b}?",
            "Which number is larger, {a} or {b}?",
            "What is the larger number: {a} or {b}?",
            "Pick the bigger one: {a} or {b}",
            "Larger of {a} and {b}?",
            "{a} or {b}: which is more?",
            "Which is more: {a} or {b}?",
            "Which one is larger, {a} or {b}?",
            "{a} vs {b}: which is bigger?",
            "Bigger number: {a} or {b}?",
            "Which of {a} and {b} is larger?",
            "Tell me which is larger: {a} or {b}.",
            "Greater one, {a} or {b}?",
        ],
        [
            "Which number is bigger, {a} or {b}?",
            "Between {a} and {b}, which is greater?",
            "Of {a} and {b}, which one is bigger?",
            "Is {a} or {b} the larger number?",
            "Tell me the greater of {a} and {b}.",
            "{a} or {b}, which is larger?",
            "What's bigger: {a} or {b}?",
            "Show me the larger of {a} and {b}.",
            "Out of {a} and {b}, which is more?",
            "Find the maximum of {a} and {b}.",
        ],
    ),
    "pattern": (
        "Complete the pattern: {s}, ?",
        [
            "Complete the pattern: {s}, ?",
            "What is the next number: {s}, ?",
            "Continue the sequence: {s}, ...",
            "{s}, ?",
            "Next term of {s}?",
            "Find the next number in {s}.",
            "Fill in the blank: {s}, _",
            "What is the next term: {s}?",
            "Sequence: {s}. What is next?",
            "Which number continues {s}?",
            "Next number after {s}?",
            "{s}, ... next?",
            "Extend the pattern {s} by one number.",
        ],
        [
            "What comes next: {s}?",
            "What number follows {s}?",
            "{s}, what's next?",
            "Give the next term in the sequence {s}.",
            "Guess the next one: {s}, ...",
            "What's the next number in {s}?",
            "{s} - what follows?",
            "Can you continue {s}?",
            "Next in line: {s}, ?",
            "Which term comes after {s}?",
        ],
    ),
    "sorting": (
        "Sort ascending: {s}",
        [
            "Sort ascending: {s}",
            "Sort these numbers from smallest to largest: {s}",
            "Arrange in increasing order: {s}",
            "Order from lowest to highest: {s}",
            "Sort {s}",
            "Sort from small to big: {s}",
            "Put these numbers in order, smallest first: {s}",
            "{s} sorted ascending?",
            "Sort from lowest to highest: {s}",
            "Arrange from smallest to largest: {s}",
            "Ascending order: {s}",
            "Smallest to largest: {s}",
            "Order {s} from least to most.",
            "Sort the list {s} in increasing order.",
            "Could you sort these: {s}",
        ],
        [
            "Put in ascending order: {s}",
            "Can you sort {s} from low to high?",
            "Rank from least to greatest: {s}",
            "List {s} in increasing order.",
            "Order these: {s}",
            "Sort these from least to most: {s}",
            "Arrange {s} from lowest to highest.",
            "Put {s} in order from smallest to biggest.",
            "Low to high please: {s}",
            "Can you order {s}, smallest first?",
        ],
    ),
    # Word problems: {N} the name, {p}/{P} its pronoun, {M} someone else, {T} the things; verbs agree with {p}. (The
    # canonical wordings' "{N} {has}" reads "Sam have" for 'they': kept, as the published test split is written so.)
    "gain": (
        "{N} {has} {a} {T}. {P} {gets} {b} more. How many {T} {does} {p} have now?",
        [
            "{N} has {a} {T}. {P} {gets} {b} more. How many {T} {does} {p} have now?",
            "{N} had {a} {T} and found {b} more. How many {T} does {N} have?",
            "There are {a} {T} in a box. {N} puts in {b} more. How many {T} are in the box now?",
            "{N} has {a} {T}. {M} gives {o} {b} more. How many {T} does {N} have?",
            "{N} collected {a} {T} on Monday and {b} on Tuesday. How many {T} did {p} collect in all?",
            "{N} {has} {a} {T} and {gets} {b} more. How many {T} now?",
            "{N} had {a} {T}. After getting {b} more, how many {T} {does} {p} have?",
            "{a} {T} are on a table and {N} brings {b} more. How many {T} are on the table?",
            "{N} picked {a} {T}, then {b} more. How many {T} did {p} pick altogether?",
            "{M} gave {N} {b} {T}. {N} already had {a}. How many {T} does {N} have in total?",
            "{N} {has} {a} {T}. {M} has {b} {T}. How many {T} do they have together?",
        ],
        [
            "{N} starts with {a} {T} and is given {b} more. What's the total?",
            "{N} owns {a} {T}. Then {p} {buys} {b} more. How many {T} does {N} own now?",
            "A shelf holds {a} {T}. Someone adds {b}. How many {T} are on the shelf?",
            "{N} scoops up {a} {T} and later {b} more. What's the count now?",
            "In a jar there are {a} {T}; {N} tosses in {b} more. How many {T} in the jar?",
        ],
    ),
    "loss": (
        "{N} {has} {a} {T}. {P} {gives} away {b}. How many {T} {does} {p} have now?",
        [
            "{N} has {a} {T}. {P} {gives} away {b}. How many {T} {does} {p} have now?",
            "{N} had {a} {T} and lost {b}. How many {T} are left?",
            "There are {a} {T} in a bag. {N} takes out {b}. How many {T} are still in the bag?",
            "{N} bought {a} {T} and used {b}. How many {T} remain?",
            "{N} has {a} {T} and eats {b}. How many {T} {does} {p} have left?",
            "{N} had {a} {T}, then gave {b} to {M}. How many {T} {does} {p} have now?",
            "{a} {T} were on the table and {N} took {b}. How many {T} are on the table now?",
            "{N} started with {a} {T} and spent {b}. How many are left?",
            "{N} {has} {a} {T}. {P} {gives} {b} to {M}. How many {T} {does} {p} keep?",
            "{N} had {a} {T} but {b} went missing. How many {T} {does} {p} have?",
            "A box held {a} {T}. {N} removed {b}. How many {T} are in the box?",
        ],
        [
            "{N} has {a} {T} and gives {b} to {M}. How many {does} {p} have left?",
            "{N} owned {a} {T} but sold {b}. How many {T} {does} {p} still own?",
            "Out of {a} {T}, {b} broke. How many {T} are left?",
            "{N} had {a} {T}; the dog chewed up {b}. How many {T} survive?",
            "From a pile of {a} {T}, {N} pulls {b}. How many {T} stay in the pile?",
        ],
    ),
}

# Sentence forms of one operation (they name the operands in their own order)
PHRASES = {
    "+": (
        ["Add {a} and {b}.", "What is the sum of {a} and {b}?", "What do {a} and {b} add up to?", "Add {b} to {a}."],
        ["Find the total of {a} and {b}.", "Put {a} and {b} together. How much?"],
    ),
    "-": (
        ["Subtract {b} from {a}.", "What is {a} take away {b}?", "Remove {b} from {a}.", "{a} subtract {b}?"],
        ["Take {b} away from {a}.", "{a} less {b}?", "Start at {a} and go down {b}."],
    ),
    "*": (
        ["Multiply {a} by {b}.", "What is the product of {a} and {b}?", "{a} multiplied by {b} is?"],
        ["What if you multiply {a} by {b}?", "What are {b} sets of {a}?"],
    ),
}

# `wide`: more frames for the tasks whose typed questions fail most (none is a held-out frame, nor uses a held-out
# word problem's verb: owns, holds, starts with, is given, buys, adds, sold, broke)
WIDE_FRAMES = {
    "arithmetic": [
        "{x} is what?",
        "{x} is?",
        "What number is {x}?",
        "Find the value of {x}.",
        "What is the result of {x}?",
        "Figure out {x}.",
        "Help me with {x}.",
        "Do the math: {x}",
        "Tell me {x}.",
        "So what is {x}?",
        "{x}, what is it?",
        "Determine {x}.",
        "{x} makes what?",
        "I want to know {x}.",
        "What comes out of {x}?",
        "Do {x} for me.",
        "{wide_phrase}",
        "{wide_phrase}",
    ],
    "two_step": [
        "Find the value of {x}.",
        "{x} is what?",
        "Work this out: {x}",
        "Tell me {x}.",
        "Figure out {x}.",
        "What number is {x}?",
        "{x} makes what?",
        "What is the result of {x}?",
        "{a}, {verb1} {b}, {verb2} {c}: what is the result?",
        "Begin with {a}; {verb1} {b}; then {verb2} {c}. Result?",
        "You have {a}. {verb1} {b}, then {verb2} {c}. What number is that?",
    ],
    "pattern": [
        "Predict the next number: {s}, ?",
        "Continue: {s}, ...",
        "{s}, ___?",
        "Find the missing next term: {s}, ?",
        "Carry on the sequence {s}.",
        "Which number should be next after {s}?",
        "Next one in the pattern {s}?",
        "Number pattern: {s}. Next?",
        "Work out the next term of {s}.",
        "{s} ... and then?",
        "In the sequence {s}, what is the next number?",
        "Tell me the next number: {s}",
    ],
    "sorting": [
        "Sort this list: {s}",
        "Sort them: {s}",
        "Sort, smallest first: {s}",
        "Reorder from smallest to biggest: {s}",
        "Line these up from smallest to largest: {s}",
        "{s} - sort them",
        "Arrange {s} in ascending order.",
        "Put {s} in order.",
        "Please sort {s}",
        "Sorted order of {s}?",
        "What is {s} sorted?",
        "Lowest first: {s}",
        "Arrange these from the smallest up: {s}",
        "{s}: put them in increasing order",
        "Organise these numbers from small to large: {s}",
        "Rearrange in ascending order: {s}",
        "Write {s} in order, least first.",
        "Order the numbers {s} from smallest to biggest.",
    ],
    "gain": ["{story}"] * 11,  # as many as the varied frames: half the word problems put together
    "loss": ["{story}"] * 11,
}
WIDE_PHRASES = {
    "+": ["What is {a} added to {b}?", "Sum {a} and {b}.", "{a} and {b} together make?", "Increase {a} by {b}."],
    "-": ["Decrease {a} by {b}.", "How much is {b} less than {a}?", "Take {b} from {a}.", "{a} with {b} taken off?"],
    "*": ["Multiply {a} and {b}.", "What is {a} groups of {b}?", "{a} lots of {b}?", "{a} multiplied with {b}?"],
}
# Word problems put together: an opening, what happened (past tense: any subject agrees), a question
OPENINGS = [
    "{N} {has} {a} {T}.", "{N} had {a} {T}.", "{N} keeps {a} {T} in a drawer.", "At first, {N} had {a} {T}.",
    "{N} began the day with {a} {T}.", "{N} counted {a} {T}.", "{N} saved {a} {T}.", "{N} was carrying {a} {T}.",
    "{N} collected {a} {T}.", "There were {a} {T} in {N}'s bag.",
]  # fmt: skip
GAINED = (
    "found|won|received|earned|collected|picked up|gathered|made|baked|ordered|grabbed|caught|borrowed|got|dug up|"
    "brought home|traded for|was sent|picked"
).split("|")
LOST = (
    "lost|dropped|ate|used|spent|gave away|threw away|donated|lent out|traded away|handed out|misplaced|mailed off|"
    "returned|left behind|recycled|used up|gave up"
).split("|")
GAINS = [
    "{P} {v} {b} more.", "Then {p} {v} {b} more.", "Later {p} {v} another {b}.", "{P} {v} {b} more {T}.",
    "{P} {v} {b} extra.", "{P} {v} {b} {T} too.", "{P} also {v} {b}.", "{M} handed {o} {b} more.",
    "{b} more {T} arrived.", "{M} sent {o} {b} {T}.", "Next, {p} {v} {b} {T}.",
]  # fmt: skip
LOSSES = [
    "{P} {v} {b}.", "Then {p} {v} {b} of them.", "Later {p} {v} {b} {T}.", "{P} {v} {b} of the {T}.",
    "{M} took {b} of them.", "{b} of them rolled away.", "{b} {T} went to {M}.", "{P} handed {b} to {M}.",
    "{b} of them went missing.", "Next, {p} {v} {b} {T}.",
]  # fmt: skip
ASKS = [
    "How many {T} does {N} have now?", "How many {T} now?", "How many {T} are there now?",
    "How many does {N} end up with?", "How many {T} does {N} have at the end?", "So how many {T} does {N} have?",
]  # fmt: skip
ASKS_GAIN = ["How many {T} in all?", "How many {T} altogether?", "How many {T} does {N} have in total?",
             "How many {T} does {N} have after that?"]  # fmt: skip
ASKS_LOSS = ["How many {T} are left?", "How many does {N} have left?", "How many {T} remain?",
             "How many {T} does {N} still have?"]  # fmt: skip


# Events around a made-up verb, told by their cue words alone: "more" gaining, "away" losing, or, with no cue in
# the event, the question ("in all" gaining; "left", "remain", "still" or none of them losing). A verb never trained
# is then no reason to subtract, as the shipped checkpoint did for every held-out verb of gaining ("buys 9 more"),
# nor to add when only the question says what was lost ("sold 9. How many does she still own?")
CUE_GAINS = ["{P} {v} {b} more.", "Then {p} {v} {b} more.", "{P} {v} {b} more {T}.", "Later {p} {v} {b} more."]
CUE_LOSSES = ["{P} {v} away {b}.", "Then {p} {v} {b} away.", "{P} {v} away {b} {T}.", "Later {p} {v} {b} of them away."]
UNCUED = ["{P} {v} {b}.", "Then {p} {v} {b}.", "Later {p} {v} {b} {T}.", "Next, {p} {v} {b} {T}."]


def story(rng: random.Random, f: dict, gain: bool, made_up_verb: bool = False) -> str:
    """A word problem put together; most of its questions fit gaining and losing alike, so the verb must be read.
    With `made_up_verb` the verb is a made-up word: half the events say "more" or "away", the other half nothing,
    and then a gain is asked by a question of gaining, and a loss by any other."""
    asks = ASKS + (ASKS_GAIN if gain else ASKS_LOSS)
    if made_up_verb:
        verb = made_up_word(rng) + rng.choice(["s", "ed"])
        if rng.random() < 0.5:
            event = rng.choice(CUE_GAINS if gain else CUE_LOSSES).format(**f, v=verb)
        else:
            event = rng.choice(UNCUED).format(**f, v=verb)
            asks = ASKS_GAIN if gain else asks
    else:
        event = rng.choice(GAINS if gain else LOSSES).format(**f, v=rng.choice(GAINED if gain else LOST))
    ask = rng.choice(asks)
    return " ".join([rng.choice(OPENINGS).format(**f), event[0].upper() + event[1:], ask.format(**f)])


# `crossed`: settings of two numbers (compared, or added, subtracted, multiplied) and of a list (continued, or
# sorted), each asked with any of its tasks' questions. None uses a held-out frame's words ("between", "of a and b",
# "greater", "comes next", "follows", "rank", "low to high", ...).
PAIR_SETTINGS = [
    "{a} and {b}: {q}", "Take {a} and {b}. {q}", "Look at {a} and {b}. {q}", "Given {a} and {b}, {q}",
    "For {a} and {b}, {q}", "Here are {a} and {b}. {q}", "Two numbers, {a} and {b}. {q}", "{a}, {b}: {q}",
    "I have {a} and {b}. {q}", "Consider {a} and {b}. {q}", "The numbers are {a} and {b}. {q}", "{a} and {b}. {q}",
]  # fmt: skip
LIST_SETTINGS = [
    "{s}: {q}", "Here is a list: {s}. {q}", "Numbers: {s}. {q}", "Look at {s}. {q}", "Take {s}. {q}",
    "Given {s}, {q}", "The numbers are {s}. {q}", "List: {s}. {q}", "I have {s}. {q}", "Consider {s}. {q}",
]  # fmt: skip
ASKED = {
    "comparison": [
        "which is larger?", "which is bigger?", "which one is larger?", "which is more?", "which is the bigger one?",
        "which number is larger?", "which is higher?", "pick the larger one.", "name the bigger one.",
        "what is the larger one?", "which is the largest?", "which one is biggest?",
    ],
    "+": ["what is their sum?", "what is the sum?", "add them.", "what do they add up to?", "what is their total?",
          "add them up.", "what do they make together?", "what is the total?"],
    "-": ["subtract the second from the first.", "what is the first minus the second?",
          "take the second away from the first.", "what is the first take away the second?",
          "what is left when you subtract the second from the first?"],
    "*": ["multiply them.", "what is their product?", "what is the product?", "multiply them together.",
          "what do they make multiplied?"],
    "pattern": [
        "what is the next number?", "which number is next?", "what should be next?", "continue it.",
        "what is the next term?", "next one?", "continue the sequence.", "what would the next number be?",
        "extend it by one number.",
    ],
    "sorting": [
        "sort them.", "sort them ascending.", "put them in order, smallest first.",
        "arrange them from smallest to largest.", "order them from lowest to highest.",
        "sort them in increasing order.", "what are they in ascending order?", "sort from smallest to biggest.",
        "put them smallest to largest.",
    ],
}  # fmt: skip
# About a third of each task's `crossed` frames
CROSSED_FRAMES = {"arithmetic": ["{crossed}"] * 14, "comparison": ["{crossed}"] * 8, "pattern": ["{crossed}"] * 12,
                  "sorting": ["{crossed}"] * 14}  # fmt: skip


def crossed(rng: random.Random, kind: str, f: dict) -> str:
    """The question in a setting it shares with another task: only the question's words say which task it is."""
    settings = PAIR_SETTINGS if kind in ("arithmetic", "comparison") else LIST_SETTINGS
    setting = rng.choice(settings)
    q = rng.choice(ASKED[f["op"] if kind == "arithmetic" else kind])
    if ". {q}" in setting:
        q = q[0].upper() + q[1:]
    return setting.format(**f, q=q)


# Who and what the held-out word problems are about: in none of the training lists
HELD_OUT_NAMES = [("Zainab", "she"), ("Thibault", "he"), ("Ngozi", "she"), ("Kenji", "he"), ("Fatima", "she"),
                  ("Lars", "he"), ("Aiko", "she"), ("Diego", "he"), ("Robin", "they")]  # fmt: skip
HELD_OUT_THINGS = ["pebbles", "magnets", "feathers", "spoons", "badges", "ribbons", "pins", "bricks", "acorns"]


# The words that say what is asked (the operation, the task, gaining or losing): never swapped for a made-up word.
# What a word problem's verb means is left to its cues ("more", "left", "away", ...), since people's verbs are many.
CUES = frozenset(
    "plus minus times x multiplied multiply by add subtract from sum product take away remove of and to up less "
    "even odd larger largest bigger biggest greater greatest more or "
    "next pattern sequence continue continues complete term blank fill extend after "
    "sort sorted ascending increasing order smallest lowest highest least most small big first arrange "
    "left remain still out keep but total together altogether all already".split()
)
FILLERS = (
    ["Hi, ", "Hey, ", "Question: ", "Quick question: ", "Can you help? ", "Q: ", "Math: ", "Homework: ", "Okay, "],
    [" Thanks!", " Thank you.", " Please.", " thanks", " :)"],
)
SYLLABLES = (
    "ba be bi bo bu da de di do ka ke ki ko la le li lo ma me mi mo na ne ni no ra re ri ro sa se si ta te to va ve vi "
    "ya yo za zu"
).split()


def made_up_word(rng: random.Random) -> str:
    """A pronounceable nonsense word, for names, things and the words a question can do without."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))


def with_nonce(rng: random.Random, text: str) -> str:
    """`text` with one word that is not a cue (nor said twice) swapped for a made-up word, or with a greeting or
    thanks around it."""
    if rng.random() < 0.5:
        before, after = FILLERS
        return rng.choice(before) + text if rng.random() < 0.5 else text + rng.choice(after)
    words = list(re.finditer(r"[A-Za-z]+", text))
    count = Counter(m.group().lower() for m in words)  # a name said twice stays: one made-up copy is someone else
    free = [m for m in words if m.group().lower() not in CUES and count[m.group().lower()] == 1]
    if not free:
        return text
    m = rng.choice(free)
    word = made_up_word(rng)
    return text[: m.start()] + (word.capitalize() if m.group()[0].isupper() else word) + text[m.end() :]


# The words that make an expression: kept when the rest of a question's words are made up
OPERATOR_WORDS = frozenset(w for names in OPS.values() for name in names for w in name.split() if w.isalpha())


def made_up_shape(rng: random.Random, numbers: str) -> str:
    """`numbers` (a list) among made-up words in a shape drawn at random: none to four words before it and after it,
    and the punctuation between. Trained frames put a list to sort last and a pattern's before ", ?" more often than
    not, and a model learns that as the task ("Can you order 4 10 40, smallest first?" was continued as a pattern):
    in these, where the list stands tells nothing."""

    def words(k: int) -> str:
        return " ".join(made_up_word(rng) for _ in range(k))

    before, after = rng.randint(0, 4), rng.randint(0, 4)
    text = (words(before) + rng.choice([" ", ": ", ", "]) if before else "") + numbers
    text += (rng.choice([" ", ", ", ". ", "? "]) + words(after)) if after else ""
    return text + rng.choice(["", "?", "."])


# the words that tell a comparison from a sum of two numbers or a list of two to sort
COMPARATIVES = frozenset({"larger", "bigger", "greater", "more"})


def with_made_up_frame(rng: random.Random, text: str, keep: frozenset[str] = OPERATOR_WORDS) -> str:
    """`text` with every word but those it must `keep` (the operators) made up: what is asked must then be read from
    the numbers (an expression, a progression, a list in no order), as it must when a person's words were never
    trained."""
    return re.sub(r"[A-Za-z]+", lambda m: m.group() if m.group().lower() in keep else made_up_word(rng), text)


# the words that tell a word problem's sign: gaining, and taking away (no word is in both)
GAIN_CUES = frozenset("more another extra all total together altogether".split())
LOSS_CUES = frozenset("away left remain still keep out".split())


def with_made_up_story(rng: random.Random, text: str, gain: bool) -> str:
    """`text`, a word problem, with every word but the sign's cues made up, where its own sign's cue and no other is
    there ("ka 17 bo. ri 46 more. zu total?"): who, what and the verbs are then no reason to read the numbers
    otherwise. Others, told by the verb alone, stay as they are."""
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    own, other = (GAIN_CUES, LOSS_CUES) if gain else (LOSS_CUES, GAIN_CUES)
    if words.isdisjoint(own) or not words.isdisjoint(other):
        return text
    return with_made_up_frame(rng, text, keep=GAIN_CUES | LOSS_CUES)


def canonical(q: Question) -> str:
    return FRAMES[q.kind][0].format(**q.fields)


def phrase(
    rng: random.Random,
    q: Question,
    wording: str,
    canonical_share: float = 0.0,
    nonce_share: float = 0.0,
    nonce_verbs: float = 0.0,
    nonce_frames: float = 0.0,
    nonce_shapes: float = 0.0,
    nonce_comparisons: float = 0.0,
    nonce_stories: float = 0.0,
) -> str:
    """The question in one of the `wording` set's frames, with typing slips drawn at random; a `canonical_share` of
    the trained wordings' questions keeps the canonical wording, a `nonce_share` of the others gets `with_nonce`, and
    a `nonce_verbs` share of the word problems is a `story` with a made-up verb (each drawn only when > 0: other
    runs' data stay as they were); a `nonce_frames` share of the questions whose numbers alone tell the task (an
    expression with its operators, a pattern, a list to sort) gets `with_made_up_frame` (a `nonce_shapes` share of
    those of a list `made_up_shape` instead), a `nonce_comparisons` share of the comparisons the same with their
    comparative kept ("zuka 32 rimo 70 bigger"), and a `nonce_stories` share of the word problems
    `with_made_up_story`."""
    trained = wording in TRAINED
    if wording == "fixed" or (canonical_share > 0 and trained and rng.random() < canonical_share):
        return canonical(q)
    held_out = wording == "held_out"
    f = dict(q.fields)
    wide = wording in ("wide", "crossed")  # crossed: wide and more
    frames = FRAMES[q.kind][2 if held_out else 1]
    if wide:
        frames = frames + WIDE_FRAMES.get(q.kind, [])
    if wording == "crossed":
        frames = frames + CROSSED_FRAMES.get(q.kind, [])
    if q.kind == "arithmetic":
        f["x"] = f"{f['a']} {rng.choice(OPS[f['op']])} {f['b']}"
        f["phrase"] = rng.choice(PHRASES[f["op"]][held_out]).format(**f)  # a sentence form of its own set
        if wide:
            f["wide_phrase"] = rng.choice(PHRASES[f["op"]][0] + WIDE_PHRASES[f["op"]]).format(**f)
    elif q.kind == "two_step":
        ops = [rng.choice(OPS[f["op1"]]), rng.choice(OPS[f["op2"]])]
        left = f"{f['a']} {ops[0]} {f['b']}"
        f["x"] = f"{left if rng.random() < 0.3 else f'({left})'} {ops[1]} {f['c']}"  # left to right: same value
        f["verb1"], f["verb2"] = VERBS[f["op1"]], VERBS[f["op2"]]
    elif q.kind in ("pattern", "sorting"):
        signs = any(v < 0 for v in f["values"])  # '1 -2 -5' would read as a subtraction
        f["s"] = rng.choice([", ", ","] if signs else [", ", ",", " "]).join(map(str, f["values"]))
    frame = rng.choice(frames)
    if nonce_verbs > 0 and trained and q.kind in ("gain", "loss") and rng.random() < nonce_verbs:
        text = story(rng, f, q.kind == "gain", made_up_verb=True)
    elif frame == "{story}":
        text = story(rng, f, q.kind == "gain")
    elif frame == "{crossed}":
        text = crossed(rng, q.kind, f)
    else:
        text = frame.format(**f)
    listed = q.kind in ("pattern", "sorting")
    told_by_numbers = listed or (q.kind in ("arithmetic", "two_step") and "{x}" in frame)
    if nonce_frames > 0 and trained and told_by_numbers and rng.random() < nonce_frames:
        shaped = nonce_shapes > 0 and listed and rng.random() < nonce_shapes
        text = made_up_shape(rng, f["s"]) if shaped else with_made_up_frame(rng, text)
    elif nonce_comparisons > 0 and trained and q.kind == "comparison" and rng.random() < nonce_comparisons:
        text = with_made_up_frame(rng, text, keep=COMPARATIVES)
    elif nonce_stories > 0 and trained and q.kind in ("gain", "loss") and rng.random() < nonce_stories:
        text = with_made_up_story(rng, text, q.kind == "gain")
    if nonce_share > 0 and trained and rng.random() < nonce_share:
        text = with_nonce(rng, text)
    return typing_slips(rng, text, doubled_space=not held_out)


def typing_slips(rng: random.Random, text: str, doubled_space: bool = False) -> str:
    """What people do when typing a question: lowercase, no final punctuation, no spaces around operators, and with
    `doubled_space` (training only: the held-out draws stay those measured before it) a space typed twice."""
    if rng.random() < 0.25:
        text = text.lower()
    if rng.random() < 0.25:
        text = text.rstrip("?.")
    if rng.random() < 0.25:
        for op in ("+", "-", "*", "="):
            text = text.replace(f" {op} ", op)
        text = text.replace(", ", ",")
    if doubled_space and rng.random() < 0.1:
        spaces = [i for i, c in enumerate(text) if c == " "]
        if spaces:
            i = rng.choice(spaces)
            text = text[:i] + " " + text[i:]
    return text
