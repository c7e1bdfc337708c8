"""The registry of L(N, D) forms: which candidates `selection.fit_auto` fits, in which order.

Each entry of `FORMS` maps a form's name to a factory ``(FormContext) -> Form | None``: the form for
these data, or None when it is not a candidate for them (a fixed-E form without a prior, the
data-constrained law without unique tokens U). Adding a law is one file holding its `forms.Form`
subclass and one line here (docs/architecture.md has a worked example, run by
`tests/unit/test_architecture_docs.py`).

>>> [f.name for f in candidate_forms([1e8, 1e9], [1e9, 1e10])]
['chinchilla', 'equal-exponent', 'chinchilla-fixed-E', 'kaplan', 'kaplan-E']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .forms import DataConstrainedForm, Form, KaplanEForm, KaplanForm, PowerSumForm


@dataclass(frozen=True)
class FormContext:
    """What a form's factory may read of the data: the centre (mean log N, mean log D), the prior on E
    (None: none given), whether unique tokens U are given."""

    centre: tuple[float, float]
    e_prior: Optional[float] = None
    has_U: bool = False

    @property
    def e_fixed(self) -> float:
        """The value a fixed-E form holds E at: the prior, else 0 (no irreducible floor)."""
        return 0.0 if self.e_prior is None else float(self.e_prior)


FormFactory = Callable[[FormContext], Optional[Form]]

FORMS: dict[str, FormFactory] = {
    "chinchilla": lambda c: PowerSumForm("chinchilla", centre=c.centre),
    "equal-exponent": lambda c: PowerSumForm("equal-exponent", tie=True, centre=c.centre),
    "chinchilla-fixed-E": lambda c: PowerSumForm("chinchilla-fixed-E", e_fixed=c.e_fixed, centre=c.centre),
    "equal-exponent-fixed-E": lambda c: (PowerSumForm("equal-exponent-fixed-E", tie=True, e_fixed=c.e_fixed,
                                                      centre=c.centre) if c.e_prior is not None else None),
    "kaplan": lambda c: KaplanForm(),
    "kaplan-E": lambda c: KaplanEForm(centre=c.centre),
    "data-constrained": lambda c: DataConstrainedForm() if c.has_U else None,
}

def candidate_forms(N, D, U=None, *, e_prior: Optional[float] = None,
                    names: Optional[Sequence[str]] = None) -> list[Form]:
    """The candidate forms for data (N, D[, U]), in `FORMS`' order; ``names`` picks a subset.

    E is held at ``e_prior`` in the fixed-E forms (0 when None: no irreducible floor), and the
    equal-exponent fixed-E form is a candidate only with a prior. The data-constrained law is one
    only when U is given.

    >>> [f.name for f in candidate_forms([1e8, 1e9], [1e9, 1e10], U=[1e9, 1e9], e_prior=1.7)][3:]
    ['equal-exponent-fixed-E', 'kaplan', 'kaplan-E', 'data-constrained']
    """
    context = FormContext((float(np.mean(np.log(N))), float(np.mean(np.log(D)))), e_prior, U is not None)
    forms = [f for f in (make(context) for make in FORMS.values()) if f is not None]
    if names is None:
        return forms
    known = {f.name: f for f in forms}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown or unavailable form(s) {', '.join(missing)}; available: {', '.join(known)}")
    return [known[n] for n in names]


__all__ = ["FORMS", "FormContext", "FormFactory", "candidate_forms"]
