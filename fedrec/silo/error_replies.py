"""What a silo says when something fails: a fixed error code, never the exception's text.

An exception's message is a release like any other: a shape mismatch names the silo's exact user count
(`torch.Size([12345, 32])`), a data error names rows and values. Flower would send `str(exc)` to the
coordinator, so under user-level DP (or when the jurisdiction sets its own privacy policy) every failure
is turned into one of a few fixed codes here, the details go to the silo's own log
(`<state-dir>/silo_errors.log`, else the node's logger), and the error reply is recorded in the egress
ledger like every other reply (`egress_ledger_mod`). A non-private run keeps Flower's default (the message,
for the researcher who owns every silo).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedrec.errors import ConfigError, DataError, FedrecError
from fedrec.silo.state_dir import StateDir

ERRORS_FILE = StateDir.ERRORS
FIXED_REASONS = {
    ConfigError: "fedrec-silo-error:config (the silo's configuration refused this message; details in its log)",
    DataError: "fedrec-silo-error:data (the silo could not use its data; details in its log)",
    FedrecError: "fedrec-silo-error:refused (details in the silo's own log)",
}
INTERNAL_REASON = "fedrec-silo-error:internal (details in the silo's own log)"
"""The only texts an error reply from a private silo carries: fixed strings, chosen by exception class."""

log = logging.getLogger("fedrec.silo")

CallNext = Callable[[Message, Context], Message]
Facts = Callable[[Context], tuple[bool, Path | None]]
"""(the silo's replies are private, its state dir) for a message's context; may raise."""


def fixed_reason(exc: BaseException) -> str:
    """The public text for `exc`: one of a fixed set, by class."""
    for cls, reason in FIXED_REASONS.items():
        if isinstance(exc, cls):
            return reason
    return INTERNAL_REASON


def keep_in_silo(state_dir: Path | None, msg: Message, exc: BaseException) -> None:
    """Write the failure's details where only the silo reads them."""
    text = "".join(traceback.format_exception(exc))
    log.error("message %s (%s, round group %s) failed:\n%s", msg.metadata.message_id, msg.metadata.message_type,
              msg.metadata.group_id, text)
    if state_dir is None:
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(StateDir(state_dir).errors_log, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {msg.metadata.message_type} "
                    f"group={msg.metadata.group_id}\n{text}\n")
    except OSError:
        log.exception("cannot write %s", StateDir(state_dir).errors_log)


def contain_errors(facts: Facts) -> Callable[[Message, Context, CallNext], Message]:
    """A client mod: an exception below it becomes an error reply with a fixed reason when the silo is private.

    `facts(context)` says whether the silo's replies are private and where it keeps its state; when that
    itself fails (a node config or run config it cannot read), the silo treats itself as private.
    """

    def mod(msg: Message, context: Context, call_next: CallNext) -> Message:
        try:
            return call_next(msg, context)
        except Exception as exc:
            try:
                private, state_dir = facts(context)
            except Exception:
                private, state_dir = True, None
            keep_in_silo(state_dir, msg, exc)
            if not private:
                raise
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=fixed_reason(exc)),
                           reply_to=msg)

    return mod
