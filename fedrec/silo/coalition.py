"""Coalitions: a jurisdiction trains only with the partners its law allows (node config / regime `partners`).

The coordinator declares, in every training message, the round's members (`round-members`) and the identity of the
version it sends (`model-identity`: parent, contributors, weights hash, ... whose SHA-256 is the `model-version`
id), and the identities of that version's ancestors back to the line's root (`model-lineage`, each hashing to the
`parent` the one before names). A silo whose jurisdiction lists `partners` declines the round when the members are
not declared, do not include it, or include a region outside its partners; and when the version it would build on
is not declared, does not hash to its id, is not the arrays it received, or it or any ancestor has a contributor
outside its partners. So a silo never builds on a line a forbidden partner shaped (a version made by allowed
regions from one apac made is still apac's work, and so is a divested line's version that subtracts apac's direct
part: its divestment record is the coordinator's word and its parent is apac's line), and never trains in a
coalition declared to include one: in its round's members, or, in a run of coalition lines, in the run config's
members of the line (`line_problem`: the silo then neither trains in the line nor reviews or serves its versions).
An evaluation message declares its version's identity and lineage too: a silo with partners neither evaluates nor
reviews (adopts, serves) a version it would not build on (`version_problem`), whichever line the coordinator took it
from.

What a silo cannot check alone: whether the coordinator told the truth about the members (it could tell one silo
[eu, na] while also training apac). Every silo's egress ledger records the members it was told, and `fedrec audit
partners` compares them across silos and with the contributors the registry records (`fedrec.coalition_audit`):
a lie leaves evidence. A silo without `partners` checks nothing here.
"""

from __future__ import annotations

import json

from flwr.app import RecordDict

from fedrec.errors import ConfigError
from fedrec.messages import MODEL_IDENTITY_KEY, MODEL_LINEAGE_KEY, read_members, read_version
from fedrec.silo.policy import SiloIdentity
from fedrec.training import Arrays
from fedrec.versions.version import canonical_arrays, version_id, weights_digest


def law_of(ident: SiloIdentity) -> str:
    """The jurisdiction's partners rule, as a decline states it."""
    return f"jurisdiction {ident.region!r} federates only with {', '.join(ident.partners or ()) or 'no one'} (partners)"


def line_problem(ident: SiloIdentity, line: str, members: list[str]) -> str | None:
    """Why this silo takes no part in coalition line `line`, whose run config declares `members` (None: it may).

    The run config is the coordinator's declaration of who trains in the line: a silo whose partners forbid one of
    them neither trains in the line (whatever members a round then declares) nor reviews or serves its versions.
    """
    if ident.partners is None:
        return None
    if forbidden := sorted(set(members) - {*ident.partners, ident.region}):
        return f"coalition line {line!r} is declared with {forbidden} (run config federation.coalitions): " \
               f"{law_of(ident)}"
    return None


def lawful_lines(ident: SiloIdentity, coalitions: dict[str, list[str]]) -> list[str]:
    """The coalition lines this region trains in: those the run config puts it in and its law allows, name order."""
    return [c for c, members in coalitions.items()
            if ident.region in members and line_problem(ident, c, members) is None]


def served_line(ident: SiloIdentity, coalitions: dict[str, list[str]]) -> str | None:
    """The line this region serves: its `serve-coalition`, else its first lawful line (None: it trains in none).

    A `serve-coalition` that is not one of its lawful lines is a `ConfigError` (the preflight's answer).
    """
    lines = lawful_lines(ident, coalitions)
    if ident.serve_coalition is None:
        return lines[0] if lines else None
    if ident.serve_coalition not in lines:
        raise ConfigError(f"serve-coalition={ident.serve_coalition!r} is not a line region {ident.region!r} trains in "
                          f"(this run's lines it may train in: {lines})")
    return ident.serve_coalition


def coalition_problem(ident: SiloIdentity, content: RecordDict, arrays: Arrays) -> str | None:
    """Why this silo must decline the training message (None: its jurisdiction allows the round)."""
    if ident.partners is None:
        return None
    allowed = {*ident.partners, ident.region}
    law = law_of(ident)
    members = read_members(content)
    if members is None:
        return f"the coordinator declared no round members (round-members): {law}, so it trains only in a declared " \
               "coalition"
    if ident.region not in members:
        return f"the declared round members {sorted(members)} do not include this silo, which was sent the round"
    if forbidden := sorted(set(members) - allowed):
        return f"the round's declared members include {forbidden}: {law}"
    return lineage_problem(ident, content, arrays, allowed, law)


def version_problem(ident: SiloIdentity, content: RecordDict, arrays: Arrays) -> str | None:
    """Why this silo may not serve (review, adopt) the version an evaluation message sends (None: it may).

    The same check as a training message's version (`lineage_problem`): a region serves no model its forbidden
    partner shaped, whichever line or run the coordinator took it from.
    """
    if ident.partners is None:
        return None
    return lineage_problem(ident, content, arrays, {*ident.partners, ident.region}, law_of(ident))


def lineage_problem(ident: SiloIdentity, content: RecordDict, arrays: Arrays, allowed: set[str], law: str
                    ) -> str | None:
    """Why the sent version may not be built on: undeclared, not what its id names, or made with a forbidden partner."""
    version = read_version(content)
    config = content.config_records["config"]
    raw = config.get(MODEL_IDENTITY_KEY)
    if not version or not isinstance(raw, str):
        return f"the coordinator did not declare who made the version it sent (model-identity): {law}, so it builds " \
               "only on a version whose contributors it can check"
    try:
        identity = json.loads(raw)
        declared_id = version_id(identity)
        contributors = [str(c) for c in identity["contributors"]]
        weights = str(identity["weights_sha256"])
    except (ValueError, TypeError, KeyError):
        return "the declared model-identity is not a version identity"
    if declared_id != version:
        return f"the declared model-identity hashes to {declared_id[:16]}, not to the sent model-version {version[:16]}"
    try:
        received = weights_digest(canonical_arrays(arrays))
    except ValueError:
        received = ""
    if received != weights:
        return "the sent arrays are not the weights the declared model-identity names"
    if forbidden := sorted(set(contributors) - allowed):
        return f"version {version[:16]} was made with contributions from {forbidden}: {law}"
    return ancestry_problem(config.get(MODEL_LINEAGE_KEY), identity.get("parent"), version, allowed, law)


def ancestry_problem(raw: object, parent: object, version: str, allowed: set[str], law: str) -> str | None:
    """Why the sent version's line may not be built on (None: every ancestor's contributors are allowed).

    Its ancestors undeclared, not a hash chain from its parent to a root, or one of them made with a forbidden
    partner. The check reads only the message: a coordinator that fabricates a whole line (a root of its own making)
    is caught only by `fedrec audit partners` against the registry and the other silos' ledgers.
    """
    if not isinstance(raw, str):
        return f"the coordinator did not declare the lineage of the version it sent (model-lineage): {law}, so it " \
               "builds only on a line whose every version's contributors it can check"
    try:
        ancestors = json.loads(raw)
        if not isinstance(ancestors, list):
            raise TypeError("not a list")
        shaped: set[str] = set()
        for ancestor in ancestors:
            if parent is None or version_id(ancestor) != parent:
                return f"the declared lineage of version {version[:16]} is not the chain of its parents"
            shaped |= {str(c) for c in ancestor["contributors"]}
            parent = ancestor["parent"]
    except (ValueError, TypeError, KeyError):
        return "the declared model-lineage is not a list of version identities"
    if parent is not None:
        return f"the declared lineage of version {version[:16]} stops before the line's root"
    if forbidden := sorted(shaped - allowed):
        return f"version {version[:16]} descends from a version made with contributions from {forbidden}: {law}"
    return None


def version_makers(content: RecordDict) -> frozenset[str]:
    """Every region that made the version a message sends or one of its ancestors, as the message declares them.

    Read after `lineage_problem` found nothing wrong (a silo with partners): then the declaration was checked.
    """
    config = content.config_records["config"]
    declared = [json.loads(str(config[MODEL_IDENTITY_KEY])), *json.loads(str(config[MODEL_LINEAGE_KEY]))]
    return frozenset(str(c) for version in declared for c in version["contributors"])
