"""Arithmetic written out the way a small model can do it: one column at a time, least-significant digit first,
carries and borrows explicit, then the result assembled. Each function returns (steps, value).

With digits tokenised one by one, every step is a single-digit fact plus a carry, found at the same place in both
operands; the multi-digit result is only ever copied. Steps never contain '<', which the trace grammar forbids.
"""


def digits(n: int) -> list[int]:
    """Least-significant first."""
    return [int(c) for c in reversed(str(n))]


def add(a: int, b: int) -> tuple[list[str], int]:
    """a + b for a, b >= 0: '7 + 8 = 15', '4 + 3 + 1 = 8', then '47 + 38 = 85'."""
    da, db = digits(a), digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        steps.append(f"{x} + {y}{f' + {carry}' if carry else ''} = {s}")
        carry = s // 10
    if len(steps) > 1:
        steps.append(f"{a} + {b} = {a + b}")
    return steps, a + b


def subtract(a: int, b: int) -> tuple[list[str], int]:
    """a - b for a >= b >= 0: '17 - 8 = 9' (borrowing), '4 - 1 - 3 = 0', then '47 - 38 = 9'."""
    assert a >= b >= 0
    da, db = digits(a), digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        top = x - borrow
        lent = top < y
        d = top + 10 * lent - y
        left = f"{10 + x if lent else x}{' - 1' if borrow else ''}"
        steps.append(f"{left} - {y} = {d}")
        borrow = int(lent)
    if len(steps) > 1:
        steps.append(f"{a} - {b} = {a - b}")
    return steps, a - b


def signed(x: int, op: str, y: int) -> tuple[list[str], int]:
    """x op y for any integer x, y >= 0 and op '+' or '-': reduced to a column sum or difference of magnitudes,
    with a step saying how when the sign needs it."""
    assert y >= 0 and op in "+-"
    value = x + y if op == "+" else x - y
    if x >= 0 and op == "+":
        return add(x, y)
    if x >= 0:
        if x >= y:
            return subtract(x, y)
        steps, _ = subtract(y, x)
        return [f"{y} > {x}, so {x} - {y} = -({y} - {x})", *steps, f"{x} - {y} = {value}"], value
    m = -x
    if op == "-":
        steps, _ = add(m, y)
        return [f"{x} - {y} = -({m} + {y})", *steps, f"{x} - {y} = {value}"], value
    if y >= m:
        steps, _ = subtract(y, m)
        return [f"{x} + {y} = {y} - {m}", *steps, f"{x} + {y} = {value}"], value
    steps, _ = subtract(m, y)
    return [f"{x} + {y} = -({m} - {y})", *steps, f"{x} + {y} = {value}"], value


def multiply(a: int, k: int) -> tuple[list[str], int]:
    """a * k for a >= 0 and a single digit k: '5 * 3 = 15', '3 * 3 + 1 = 10', ..., then '135 * 3 = 405'."""
    assert 0 <= k <= 9 and a >= 0
    steps, carry = [], 0
    for x in digits(a):
        p = x * k + carry
        steps.append(f"{x} * {k}{f' + {carry}' if carry else ''} = {p}")
        carry = p // 10
    if len(steps) > 1:
        steps.append(f"{a} * {k} = {a * k}")
    return steps, a * k
