"""nanochat's calculator tool. A model whose tokenizer has the tool tokens writes `<|python_start|>expr<|python_end|>`;
the engine then forces `<|output_start|>result<|output_end|>` into that row before it samples again (GSM8K and
SpellingBee answers lean on it).

The expression is parsed, never run: numbers, + - * /, unary minus and parentheses (commas removed, as nanochat
does), or `"literal".count("literal")`. No names, no calls besides that one, no `**`; anything else, a division by
zero, or an expression over MAX_CHARS gives no output. Bounded in size with no power operator, an expression is
also bounded in time.
"""

import ast
import operator

from recurlm.text.tokenizer import Tokenizer

MAX_CHARS = 200
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")


class _Refused(Exception):
    pass


def _value(node: ast.AST):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if (  # "strawberry".count("r"): the only call, on string literals
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "count"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.func.value.value.count(node.args[0].value)
    raise _Refused


def calculate(expr: str) -> str | None:
    """The result as nanochat's tool prints it (str of the Python value), or None."""
    if "count(" not in expr:
        expr = expr.replace(",", "")
    if len(expr) > MAX_CHARS or "**" in expr:
        return None
    try:
        return str(_value(ast.parse(expr.strip(), mode="eval").body))
    except (SyntaxError, _Refused, ZeroDivisionError, OverflowError, ValueError, RecursionError):
        return None


class Calculator:
    """The tool for one tokenizer: what to force after a row's tokens (see `Engine.stream`)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.start, self.end, self.out_start, self.out_end = (tok.token_id(t) for t in TOKENS)

    @classmethod
    def for_tokenizer(cls, tok: Tokenizer) -> "Calculator | None":
        return cls(tok) if all(tok.token_id(t) is not None for t in TOKENS) else None

    def forced(self, generated: list[int]) -> list[int]:
        """Tokens to force after `generated` (a row's new tokens): its result when the last one closes a call."""
        if not generated or generated[-1] != self.end or self.start not in generated:
            return []
        opened = len(generated) - 1 - generated[::-1].index(self.start)
        result = calculate(self.tok.decode(generated[opened + 1 : -1]))
        return [] if result is None else [self.out_start, *self.tok.encode(result), self.out_end]
