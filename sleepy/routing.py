"""Route each koan to its family's adapter by what the compiler says, before the model is called.

A koan's family is not read from its label: the codes of the errors rustc reports on its broken code are
looked up in a table built from the train koans' declared errors (each code -> the family that declares it
most often), so an eval koan is routed the way any new program would be. A koan whose broken code reports no
known code (a failing test, say) gets the averaged adapter.
"""

from __future__ import annotations

from collections import Counter


def family_by_code(koans) -> dict[str, str]:
    """rustc error code -> the family whose koans declare it most often (ties: the first family by name)."""
    votes: dict[str, Counter] = {}
    for koan in koans:
        for code in koan.expected_errors:
            votes.setdefault(code, Counter())[koan.family] += 1
    return {code: min(c, key=lambda family: (-c[family], family)) for code, c in votes.items()}


class FamilyRouter:
    """verdict -> the adapter of the family its first known error code belongs to, else `default`."""

    def __init__(self, codes: dict[str, str], adapters: dict[str, str], default: str | None):
        self.codes, self.adapters, self.default = codes, adapters, default

    def family(self, verdict) -> str | None:
        for code in verdict.error_codes:
            if code in self.codes:
                return self.codes[code]
        return None

    def __call__(self, verdict) -> str | None:
        return self.adapters.get(self.family(verdict), self.default)
