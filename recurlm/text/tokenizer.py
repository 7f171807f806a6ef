"""Tokenizers (docs/design.md §3): a fixed character alphabet, or byte-level BPE trained with HF `tokenizers`.

Both kinds are HF tokenizers underneath, so both save to and load from one `tokenizer.json`, and the special
tokens are single tokens matched before anything else.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from recurlm.errors import UserError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
CHAT = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TRACE = ["<INST>", "</INST>", "<THINK>", "</THINK>", "<STEP>", "</STEP>", "<ANS>", "</ANS>"]
# nanochat's own special tokens: a tokenizer holding them poses every task as a user turn answered by the assistant
# (recurlm/text/chat.py), as nanochat's chat models are trained and evaluated
NANOCHAT = ["<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>"]
NANOCHAT += ["<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
SPECIALS = {
    "all": [BOS, EOS, PAD, *CHAT, *TRACE],
    "nanochat": [BOS, *NANOCHAT, *TRACE],
    "pad": [PAD],  # the 13-symbol RR-SLM addition vocab: digits, '+', '=' and pad (which also ends the answer)
}


class Tokenizer:
    """`encode` reads text as text: a user who types `<|eos|>` or `</INST>` gets the characters, never the special
    token. `encode_markup` also turns the special tokens' spellings into them: for text the project writes itself
    (task examples with their `<THINK>` traces, prompt templates), never for what a user typed."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.kind = "char" if isinstance(hf.model, models.WordLevel) else "bpe"
        self._text = HFTokenizer.from_str(hf.to_str())  # a copy that matches no special token in the text
        self._text.encode_special_tokens = True
        specials = {t.content for t in hf.get_added_tokens_decoder().values()}
        # The most characters one token covers in text (special tokens never come from text): a bound on how much
        # text fits in a context, checked before tokenising a huge prompt
        self.longest_token = max((len(t) for t in hf.get_vocab() if t not in specials), default=1)
        # The chat format, chosen once: nanochat's turns, recurlm's own roles, or none (a task model)
        if self.token_id("<|user_start|>") is not None:
            self.chat_format = "nanochat"
        elif self.token_id("<|user|>") is not None:
            self.chat_format = "recurlm"
        else:
            self.chat_format = None

    @classmethod
    def char(cls, alphabet: str, specials: str = "all") -> "Tokenizer":
        if len(set(alphabet)) != len(alphabet):
            raise UserError("tokenizer alphabet has repeated characters")
        hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(alphabet)}, unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        hf.decoder = decoders.Fuse()
        hf.add_special_tokens(SPECIALS[specials])
        return cls(hf)

    @classmethod
    def bpe(cls, texts: Iterable[str], vocab_size: int, specials: str = "all", split_digits: bool = False):
        """Byte-level BPE trained on `texts`; with no texts, the 256 bytes alone (any text still encodes).
        `split_digits` keeps every digit a token of its own: a merge like '47' would hide from a small model the
        digits it must add."""
        hf = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if split_digits:
            hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            hf.pre_tokenizer = byte_level
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIALS[specials],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the HF error is a long Rust message; one line is enough
            raise UserError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None

    def save(self, path: str | Path):
        self.hf.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    @property
    def eos_id(self) -> int:
        """The token that ends a generation: <|eos|>, nanochat's <|assistant_end|>, or <|pad|> in the minimal vocab."""
        for token in (EOS, "<|assistant_end|>", PAD):
            if (i := self.token_id(token)) is not None:
                return i
        return None

    @property
    def stop_ids(self) -> list[int]:
        """The tokens that end a generation: the eos_id, and for nanochat's tokenizers <|bos|> too (as its engine)."""
        bos = self.token_id(BOS) if self.token_id("<|assistant_end|>") is not None else None
        return [i for i in (self.eos_id, bos) if i is not None]

    @property
    def digit_ids(self) -> set[int]:
        """Ids of the tokens that are one decimal digit (every digit of a char tokenizer)."""
        vocab = self.hf.get_vocab()
        return {vocab[d] for d in "0123456789" if d in vocab}

    @property
    def bos_ids(self) -> list[int]:
        """What every sequence starts with: [<|bos|>], or nothing in a vocabulary without it."""
        bos = self.token_id(BOS)
        return [] if bos is None else [bos]

    def encode(self, text: str) -> list[int]:
        """Text as text: special tokens' spellings are ordinary characters."""
        return self._encode(self._text, text)

    def encode_markup(self, text: str) -> list[int]:
        """Text the project wrote, whose special tokens' spellings are those tokens."""
        return self._encode(self.hf, text)

    def _encode(self, hf: HFTokenizer, text: str) -> list[int]:
        try:
            text.encode("utf-8")  # a lone surrogate (valid JSON, not text) would reach the tokenizer as a panic
        except UnicodeEncodeError:
            raise UserError("text is not valid Unicode (it has a lone surrogate)") from None
        try:
            return hf.encode(text, add_special_tokens=False).ids
        except Exception:
            vocab = self.hf.get_vocab()
            bad = sorted({c for c in text if c not in vocab})
            raise UserError(f"text has characters outside the tokenizer's alphabet: {''.join(bad)!r}") from None

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)


# Abacus ids carry a prompt digit's number (model.abacus_operands) as number * OPERAND_STRIDE + significance: one
# tensor through data, engine and cache, split again by the model's embedding
OPERAND_STRIDE = 1 << 16


def significance_ids(
    ids: list[int], n_prompt: int, digit_ids: set[int], shift: int = 0, operands: int = 0
) -> list[int]:
    """Abacus ids: for each digit token its significance in its number (1 = units), 0 for other tokens; with
    `shift` k, digits take significance + k and the prompt's last token, when not a digit, k (as training's
    offsets write them: `training.data.offset`). With `operands` n, a prompt digit of the i-th number also carries
    min(i, n) * OPERAND_STRIDE.

    Prompt numbers are written most-significant digit first, so they count from their last digit; generated numbers
    are written least-significant digit first (reversed answers), so they count from their first, which is known
    at each step of generation. Digits of equal significance then share an embedding wherever they stand.
    """
    out = [0] * len(ids)
    i = number = 0
    while i < n_prompt:
        j = i
        while j < n_prompt and ids[j] in digit_ids:
            j += 1
        number += j > i
        for k in range(i, j):
            out[k] = j - k + OPERAND_STRIDE * min(number, operands)
        i = j + 1 if j == i else j
    run = 0
    for k in range(n_prompt, len(ids)):
        run = run + 1 if ids[k] in digit_ids else 0
        out[k] = run
    return shifted(out, shift, n_prompt)


def shifted(significance: list[int], k: int, n_prompt: int) -> list[int]:
    """Significance ids with every digit's shifted by k, and the prompt's last token, when not a digit, taking k:
    it predicts the units digit, and without it that token could not tell which ids are the units."""
    if not k:
        return significance
    out = [d + k if d else 0 for d in significance]
    if 0 < n_prompt <= len(out) and not out[n_prompt - 1]:
        out[n_prompt - 1] = k
    return out
