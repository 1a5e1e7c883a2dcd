"""The papers' claims as data, checked on the zoo's seeds, one way in every notebook.

A `Claim` records what the paper says (its table or section, the models compared, the paper's gap) and a
`Ledger` measures it: "holds" needs the paper's sign and a gap larger than the seed spread (the larger sd of the
two sides, over at least two seeds). In full mode a claim whose models the zoo lacks fails at once, naming the
command that trains them; in smoke mode (the tiny zoo) it is measured, printed and never asserted. `Ledger.check`
asserts every claim, except the ones a notebook names as not reproduced (which must then still not hold), so CI
fails when either kind changes. `Ledger.rows()` is the "paper against ours" table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcore.zoo.evidence import over_seeds
from dlcore.zoo.recipe import ZooError, rebuild_command


@dataclass(frozen=True)
class Claim:
    """The paper's claim that `a` scores `paper_gap` points above `b` (negative: below), in `source`.

    `within`: the claim is instead that the two are within that many points of each other (v1 Table 2: LargeFOV
    "as good as" 7x7). "Adds at least N points" is `a` against `b` = the baseline + N.
    """

    text: str
    source: str
    paper_gap: float | None
    within: float | None = None


class Ledger:
    """The claims one notebook measures and their verdicts. `wanted`: label -> zoo model name of every model the
    notebook compares; `present`: those the zoo holds (`zoo.present`)."""

    def __init__(self, wanted: dict, present: dict, *, smoke: bool):
        self.wanted, self.present, self.smoke = dict(wanted), dict(present), smoke
        self.results: dict[str, dict] = {}
        self.claims: dict[str, Claim] = {}

    def measure(self, claim: Claim, a, b, *, needs=()) -> dict:
        """Measure `claim` on per-seed values `a()` and `b()` (callables, run only when the zoo holds `needs`)."""
        missing = [self.wanted.get(label, label) for label in needs if label not in self.present]
        if missing:
            if not self.smoke:
                raise ZooError(f"the claim {claim.text!r} needs {', '.join(missing)}, which the zoo lacks; train "
                               + " and ".join(f"`{rebuild_command(n)}`" for n in missing))
            print(f"{'unmeasured':<15} {claim.text}: the zoo lacks {missing}")
            return {}
        result = verdict_of(claim, np.asarray(a(), float), np.asarray(b(), float))
        self.claims[claim.text], self.results[claim.text] = claim, result
        paper = "" if claim.paper_gap is None else f"; paper {claim.paper_gap:+.2f} ({claim.source})"
        print(f"{result['verdict']:<15} {claim.text}: gap {result['gap']:+.1f}, seed sd {result['spread']:.1f}{paper}")
        return result

    def check(self, not_reproduced=()) -> None:
        """Assert every measured claim (full mode only): those in `not_reproduced` must not hold, the others must."""
        unknown = sorted(set(not_reproduced) - set(self.results))
        if unknown and not self.smoke:
            raise AssertionError(f"named as not reproduced but never measured: {unknown}")
        if self.smoke:
            return
        for text, r in self.results.items():
            if text in not_reproduced:
                assert not r["holds"], f"now reproduced, update the notebook: {text} ({r})"
            else:
                assert r["holds"], f"the paper's claim does not hold: {text} ({r})"

    def rows(self) -> list[dict]:
        """One row per claim: the text, the source, the paper's gap, ours (mean gap, seed sd) and the verdict."""
        return [{"claim": t, "source": self.claims[t].source, "paper": self.claims[t].paper_gap, "ours": r["gap"],
                 "sd": r["spread"], "seeds": r["seeds"], "verdict": r["verdict"]} for t, r in self.results.items()]


def verdict_of(claim: Claim, a: np.ndarray, b: np.ndarray) -> dict:
    """{"gap", "spread", "seeds", "holds", "verdict"} of `claim` on per-seed values `a` and `b`.

    An ordering holds when the gap has the paper's sign and exceeds the spread; "within" when |gap| <= within plus
    the spread; a
    claim on fewer than two seeds has an unknown spread and never holds."""
    (ma, sa), (mb, sb) = over_seeds(a), over_seeds(b)
    gap, spread, seeds = ma - mb, max(sa, sb), min(len(a), len(b))
    if seeds < 2:
        holds = False
    elif claim.within is not None:
        holds = abs(gap) <= claim.within + spread
    else:
        sign = 1.0 if claim.paper_gap is None or claim.paper_gap >= 0 else -1.0
        holds = sign * gap > spread
    return {"gap": round(float(gap), 2), "spread": round(float(spread), 2), "seeds": int(seeds), "holds": bool(holds),
            "verdict": "too few seeds" if seeds < 2 else "holds" if holds else "NOT reproduced"}
