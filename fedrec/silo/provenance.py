"""What shaped the per-user state a silo continues: its own record, checked before it builds on that state again.

A silo's users' parameters and optimizer moments of a run key (`fedrec.silo.state`) were trained on the versions it
received there, with DP or without. A round continues them: the same key's (a run name the coordinator reuses), or
an earlier run's (`users-from`: the rebuilt line of a fast divestment continues its users, `USERS_FROM@LINE` for a
coalition line). Either way a coordinator could otherwise make a silo build on a line its partners law now forbids
(a fresh, lawful lineage over users trained on the forbidden partner's versions), or release under DP from users
trained without it (each user's hidden state then depends on the others' data, and no per-user clip bounds what
one user changes). So the silo records, beside that state, whether every round that trained it was a DP round and
which regions made the versions it trained on (as a silo with `partners` checked them; unchecked otherwise), and
declines to continue state it cannot vouch for: under DP, state trained without DP; with partners, state whose
makers it did not check or its law now forbids. State kept without a record is vouched for by nothing. The decline
says only that the record does not allow it; what the record holds stays in the silo's own log, since `users-from`
may name a run of another federation (that such state exists and is refused is all a reply tells).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fedrec.models import ModelSpec
from fedrec.silo.coalition import law_of
from fedrec.silo.policy import SiloIdentity
from fedrec.statistics import is_statistics_model

log = logging.getLogger("fedrec.silo")


@dataclass(frozen=True)
class Provenance:
    """What shaped one run key's per-user state, as the silo recorded it while training."""

    private: bool = True
    """Every round that trained it was a DP round."""
    makers: frozenset[str] | None = frozenset()
    """The regions whose versions (and their ancestors) it was trained on; None: some round's makers went unchecked."""

    def then(self, *, private: bool, makers: frozenset[str] | None) -> Provenance:
        """This record after one more round (`private` or not, on a version `makers` shaped; None: unchecked)."""
        return Provenance(self.private and private,
                          None if self.makers is None or makers is None else self.makers | makers)

    def to_json(self) -> str:
        """The record as the state dir keeps it."""
        return json.dumps({"private": self.private, "makers": None if self.makers is None else sorted(self.makers)})

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Read `to_json`'s record; an unreadable one vouches for nothing (`UNKNOWN`)."""
        try:
            raw = json.loads(text)
            makers = raw["makers"]
            return cls(private=raw["private"] is True,
                       makers=None if makers is None else frozenset(str(m) for m in makers))
        except (ValueError, TypeError, KeyError):
            return UNKNOWN


UNKNOWN = Provenance(private=False, makers=None)
"""State kept without a (readable) record: trained for all the silo can tell without DP, on unchecked versions."""


def continued_problem(ident: SiloIdentity, key: str, provenance: Provenance, *, private: bool, named_by: str
                      ) -> str | None:
    """Why the silo may not continue the state of run key `key` (None: it may).

    `private`: the round would be a DP release. `named_by`: how the message led to `key` ("users-from" or "").
    """
    where = f"the users and optimizer moments it kept for {key!r}" + (f" (named by {named_by})" if named_by else "")
    if private and not provenance.private:
        return (f"this round would continue {where}, trained without DP: a DP release starts only from users that "
                "depend on no other user's data")
    if ident.partners is None:
        return None
    if provenance.makers is None:
        return (f"this round would continue {where}, trained on versions whose makers this silo did not check: "
                f"{law_of(ident)}, and it cannot check who shaped them")
    if forbidden := sorted(provenance.makers - {*ident.partners, ident.region}):
        return (f"this round would continue {where}, trained on versions made with contributions from {forbidden}: "
                f"{law_of(ident)}")
    return None


def continuing_problem(ident: SiloIdentity, spec: ModelSpec, run_key: str, continued: tuple[str, Provenance] | None,
                       *, private: bool) -> str | None:
    """Why the silo may not continue the users and optimizer moments this message's round would start from.

    `continued` (`SiloState.continued`): its own of run key `run_key`, or (while it keeps none) those of the earlier
    run `users-from` names, and what shaped them; a statistics model (EASE, iALS) continues none. The reason a reply
    gives is fixed: what the record says (with or without DP, whose versions) stays in the silo's own log, since
    `users-from` may name a run of another federation the coordinator has no part in.
    """
    if continued is None or is_statistics_model(spec):
        return None
    key, provenance = continued
    via = " (named by users-from)" if key != run_key else ""
    why = continued_problem(ident, key, provenance, private=private, named_by=via.strip(" ()"))
    if why is None:
        return None
    log.warning("region %s declines: %s", ident.region, why)
    return (f"this silo does not continue the users and optimizer moments it kept for {key[:80]!r}{via}: its own "
            "record of how they were trained does not allow it under this run's privacy and its jurisdiction's law "
            "(details in the silo's own log)")
