"""Which rustc error codes belong to which koan family.

Two views of one table. A forged koan belongs to the family of the mutation that made it, and is kept
only when every error rustc reports is one of that family's codes (`CODES`: a code may belong to several
families, as E0277 is a missing trait bound and also `?` on an Option in a Result function). A koan of
the error-code pack has only its code to go by: `family_of` gives each code one family, `other` for the
codes outside the five.
"""

from __future__ import annotations

FAMILIES = {
    "borrow_checker": "moves, borrows, mutability: E0382, E0499, E0502, E0505, E0506, E0507, ...",
    "lifetimes": "lifetime annotations and references that outlive their data: E0106, E0515, E0597, ...",
    "trait_bounds": "generic bounds, derives, trait objects and impls: E0277, E0369, E0599, E0038, ...",
    "result_handling": "Result and Option: the ? operator, conversions, exhaustive matches: E0277, E0308, ...",
    "type_mismatch": "types that do not line up: E0308, E0277, E0599, invalid casts, ...",
}
OTHER = "other"

# the codes a family's koans may fail with (the builtin koans' codes of that family among them)
CODES: dict[str, frozenset[str]] = {
    "borrow_checker": frozenset("E0373 E0381 E0382 E0384 E0499 E0500 E0501 E0502 E0503 E0505 E0506 E0507 E0508 "
                                "E0509 E0510 E0594 E0596 E0597 E0713 E0716".split()),
    "lifetimes": frozenset("E0106 E0195 E0261 E0262 E0263 E0309 E0310 E0373 E0478 E0491 E0495 E0515 E0521 E0581 "
                           "E0582 E0597 E0621 E0623 E0637 E0700 E0716 E0726 E0759 E0772".split()),
    "trait_bounds": frozenset("E0038 E0046 E0049 E0050 E0053 E0117 E0119 E0120 E0191 E0195 E0200 E0201 E0204 E0207 "
                              "E0220 E0221 E0223 E0225 E0275 E0276 E0277 E0282 E0283 E0308 E0323 E0324 E0325 E0368 "
                              "E0369 E0382 E0392 E0404 E0405 E0407 E0507 E0599 E0600 E0608".split()),
    "result_handling": frozenset("E0004 E0005 E0277 E0282 E0308 E0369 E0599 E0609 E0614 E0023 E0026 E0027 E0029 "
                                 "E0164".split()),
    "type_mismatch": frozenset("E0054 E0061 E0069 E0070 E0277 E0282 E0308 E0368 E0369 E0560 E0599 E0600 E0604 "
                               "E0605 E0606 E0607 E0608 E0609 E0610 E0614 E0618 E0620".split()),
}

# the one family an error code stands for when the code is all there is (the error-code pack)
_PRIMARY = {
    "borrow_checker": "E0381 E0382 E0384 E0499 E0500 E0501 E0502 E0503 E0505 E0506 E0507 E0508 E0509 E0510 E0594 "
                      "E0596 E0713",
    "lifetimes": "E0106 E0195 E0261 E0262 E0263 E0309 E0310 E0373 E0478 E0491 E0495 E0515 E0521 E0581 E0582 E0597 "
                 "E0621 E0623 E0637 E0700 E0716 E0726 E0759 E0772",
    "trait_bounds": "E0038 E0046 E0049 E0050 E0053 E0117 E0119 E0120 E0191 E0200 E0201 E0204 E0207 E0220 E0221 E0223 "
                    "E0225 E0275 E0276 E0277 E0283 E0323 E0324 E0325 E0369 E0392 E0404 E0405 E0407 E0599 E0600",
    "result_handling": "E0004 E0005 E0023 E0026 E0027 E0029 E0164",
    "type_mismatch": "E0054 E0061 E0069 E0070 E0282 E0308 E0368 E0560 E0604 E0605 E0606 E0607 E0608 E0609 E0610 "
                     "E0614 E0618 E0620",
}
FAMILY_OF_CODE: dict[str, str] = {code: family for family, codes in _PRIMARY.items() for code in codes.split()}
NEW_CODES_FROM = "E0700"  # codes from here on are newer, so less likely seen by a model in training


def family_of(code: str) -> str:
    """The family an error code stands for, `other` for codes outside the five."""
    return FAMILY_OF_CODE.get(code, OTHER)


def accepts(family: str, codes) -> bool:
    """A mutant of this family's mutation is kept only when it fails, and with this family's codes alone."""
    codes = set(codes)
    return bool(codes) and codes <= CODES[family]


def is_new(code: str) -> bool:
    return code >= NEW_CODES_FROM
