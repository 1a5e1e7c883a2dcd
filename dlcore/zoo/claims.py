"""The papers' claims as data, checked on the zoo's seeds, one way in every notebook.

A `Claim` records what the paper says (its table or section, the paper's gap) and a `Ledger` measures it: "holds"
needs the paper's sign and a gap larger than the seed spread (the larger sd of the two sides, over at least three
seeds). In smoke mode (the tiny zoo) a claim is measured, printed and never asserted. `Ledger.check`
asserts every claim, except the ones a notebook names as not reproduced (which must then still not hold), so CI
fails when either kind changes. `Ledger.rows()` is the "paper against ours" table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.zoo.evidence import over_seeds


@dataclass(frozen=True)
class Claim:
    """The paper's claim that `a` scores `paper_gap` points above `b` (negative: below), in `source`.

    `within`: the claim is instead that the two are within that many points of each other (v1 Table 2: LargeFOV
    "as good as" 7x7). `at_least`: the gap must exceed this margin too ("the CRF adds at least 2 points").
    """

    text: str
    source: str
    paper_gap: float | None
    within: float | None = None
    at_least: float = 0.0


class Ledger:
    """The claims one notebook measures and their verdicts. The models behind them are the zoo's (`zoo.present`
    has already refused a zoo that lacks one, naming the command that trains it); `smoke`: the tiny zoo, whose
    verdicts are printed and never asserted."""

    def __init__(self, *, smoke: bool):
        self.smoke = smoke
        self.results: dict[str, dict] = {}
        self.claims: dict[str, Claim] = {}
        self.reasons: dict[str, str] = {}  # claim text -> why it does not reproduce (`check`)

    def measure(self, claim: Claim, a, b) -> dict:
        """Measure `claim` on the per-seed values `a` and `b`, print its verdict, and keep it for `check`."""
        result = verdict_of(claim, np.asarray(a, float), np.asarray(b, float))
        self.claims[claim.text], self.results[claim.text] = claim, result
        paper = "" if claim.paper_gap is None else f"; paper {claim.paper_gap:+.2f} ({claim.source})"
        print(f"{result['verdict']:<15} {claim.text}: gap {result['gap']:+.1f}, seed sd {result['spread']:.1f}{paper}")
        return result

    def fact(self, claim: Claim, ours: float, holds: bool) -> dict:
        """Record a claim on a measured quantity with no seeds (a cost ratio from the architectures), print it."""
        result = {"gap": round(float(ours), 2), "spread": 0.0, "seeds": 0, "holds": bool(holds),
                  "verdict": "holds" if holds else "NOT reproduced"}
        self.claims[claim.text], self.results[claim.text] = claim, result
        paper = "" if claim.paper_gap is None else f"; paper {claim.paper_gap:g} ({claim.source})"
        print(f"{result['verdict']:<15} {claim.text}: {ours:.2f}{paper}")
        return result

    def check(self, not_reproduced: dict | None = None) -> None:
        """Assert every measured claim (full mode only): those in `not_reproduced` ({claim text: the measured
        reason, in a few words}) must not hold, the others must."""
        self.reasons = dict(not_reproduced or {})
        unknown = sorted(set(self.reasons) - set(self.results))
        if unknown and not self.smoke:
            raise AssertionError(f"named as not reproduced but never measured: {unknown}")
        if self.smoke:
            return
        for text, r in self.results.items():
            if text in self.reasons:
                assert not r["holds"], f"now reproduced, update the notebook: {text} ({r})"
            else:
                assert r["holds"], f"the paper's claim does not hold: {text} ({r})"

    def rows(self) -> list[dict]:
        """One row per claim: the text, the source, the paper's gap, ours (mean gap, seed sd), the verdict and, for
        a claim named as not reproduced, the measured reason."""
        return [{"claim": t, "source": self.claims[t].source, "paper": None if self.claims[t].paper_gap is None else
                 round(self.claims[t].paper_gap, 2), "ours": r["gap"],
                 "sd": r["spread"], "seeds": r["seeds"], "verdict": r["verdict"], "reason": self.reasons.get(t, "")}
                for t, r in self.results.items()]

    def save(self, folder, notebook: str) -> Path | None:
        """Write `rows()` to folder/NOTEBOOK.json for the "paper against ours" page (full mode only: a smoke run's
        tiny zoo measures nothing worth a page). Returns the path written, or None."""
        if self.smoke:
            return None
        from dlcore.io import atomic_write_bytes

        path = Path(folder) / f"{notebook}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(path, json.dumps({"notebook": notebook, "rows": self.rows()}, indent=1).encode())


def verdict_of(claim: Claim, a: np.ndarray, b: np.ndarray) -> dict:
    """{"gap", "spread", "seeds", "holds", "verdict"} of `claim` on per-seed values `a` and `b`.

    An ordering holds when the gap has the paper's sign and exceeds the spread; "within" when |gap| <= within plus
    the spread; a
    claim on fewer than three seeds (the papers' orderings need the spread of three) never holds."""
    (ma, sa), (mb, sb) = over_seeds(a), over_seeds(b)
    gap, spread, seeds = ma - mb, max(sa, sb), min(len(a), len(b))
    if seeds < 3:
        holds = False
    elif claim.within is not None:
        holds = abs(gap) <= claim.within + spread
    else:
        sign = 1.0 if claim.paper_gap is None or claim.paper_gap >= 0 else -1.0
        holds = sign * gap - claim.at_least > spread
    return {"gap": round(float(gap), 2), "spread": round(float(spread), 2), "seeds": int(seeds), "holds": bool(holds),
            "verdict": "too few seeds" if seeds < 3 else "holds" if holds else "NOT reproduced"}


NOTEBOOK_TITLES = {"01": "FCN", "03": "DeepLab v1", "05": "DeepLab v1, boundaries", "06": "DeepLab v2, ASPP",
                   "07": "DeepLab v2, ResNet-101", "08": "The VOC protocol", "09": "CRF as RNN"}


def page(saved: list) -> str:
    """The "paper against ours" page (Markdown) from the rows the notebooks' full runs saved (`Ledger.save`'s
    files): every claim with the paper's number, ours with the seed sd, and the verdict (with its measured reason)."""
    if not saved:
        raise FileNotFoundError("no claims to show: run the notebooks in full (`make figures`) first")
    lines = ["# The papers against ours", "",
             "Every claim the notebooks check, measured on the teaching zoo (SyntheticScenes, three seeds; the papers "
             "on PASCAL VOC). A gap is in points of mean IoU unless the claim says otherwise; *holds* needs the "
             "paper's sign and a gap larger than the seed spread (the larger sd of the two sides). Written by "
             "`make figures` from the notebooks' runs.", ""]
    for path in sorted(saved, key=lambda p: Path(p).name):
        notebook = json.loads(Path(path).read_text())
        number = notebook["notebook"]
        lines += [f"## {number} · {NOTEBOOK_TITLES.get(number, '')}".rstrip(" ·"), "",
                  "| claim | paper | ours (sd, seeds) | verdict |", "| --- | --- | --- | --- |"]
        for r in notebook["rows"]:
            form = "+.2f" if r["seeds"] else ".2f"  # a gap has a sign; a fact (a cost ratio) has none
            paper = r["source"] + ("" if r["paper"] is None else f": {r['paper']:{form}}")
            ours = f"{r['ours']:{form}}" + (f" (sd {r['sd']:.2f}, {r['seeds']} seeds)" if r["seeds"] else "")
            verdict = r["verdict"] + (f": {r['reason']}" if r["reason"] else "")
            lines.append(f"| {r['claim']} | {paper} | {ours} | {verdict} |")
        lines.append("")
    return "\n".join(lines)
