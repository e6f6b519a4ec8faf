"""Where a file and each of its deliveries stand: the states, and the one table of moves.

A file:
    SETTLING -> WAITING -> CLAIMED -> DELIVERED -> DONE
                                   -> REJECTED  -> FAILED
A claimed file whose bytes changed goes back to RESETTLING (in its claim folder) and is claimed
again once it is still; a claimed file whose jobs all stopped waiting is WAITING again (still in
its claim folder). Unmatched or odd files go from SETTLING or WAITING straight to REJECTED.

A delivery (one file to one job):
    ASSIGNED -> UPLOADING -> UPLOADED
An upload the server definitely did not keep goes back to ASSIGNED; a job that is gone or taken
is GONE (ASSIGNED again if it is listed as waiting again); a job we failed is REJECTED; a job
the file never reached, for a reason that is not its content (an unreadable file, a file changed
after another job got it), is RELEASED, free for another file.
"""

from __future__ import annotations

import functools
from enum import Enum

from pushagent.errors import PushAgentError

__all__ = [
    "DELIVERY_MOVES",
    "FILE_MOVES",
    "FINISHED",
    "IN_DROP_FOLDER",
    "OPEN_DELIVERIES",
    "PENDING",
    "RESERVING",
    "DeliveryState",
    "FileState",
    "IllegalTransition",
    "delivery_sources_of",
    "sources_of",
]


class FileState(Enum):
    SETTLING = "settling"  # in the drop folder, possibly still being written
    WAITING = "waiting"  # complete, waiting for a job of its segment
    CLAIMED = "claimed"  # in state_dir/claimed/<id>/, assigned to jobs, being delivered
    RESETTLING = "resettling"  # claimed, but changed under us: waits to be still again
    DELIVERED = "delivered"  # every job it reached has it; the move to done/ is left
    REJECTED = "rejected"  # refused, with a reason; the move to failed/ is left
    DONE = "done"  # in done/
    FAILED = "failed"  # in failed/, beside <name>.error.json
    VANISHED = "vanished"  # removed by someone else before it was delivered


class DeliveryState(Enum):
    ASSIGNED = "assigned"
    UPLOADING = "uploading"  # may have reached the server: the job's status decides
    UPLOADED = "uploaded"
    GONE = "gone"  # the job stopped waiting or was taken: not failed by us
    REJECTED = "rejected"  # we failed the job with the file's reason
    RELEASED = "released"  # never sent, for a reason that is not the file's content


FILE_MOVES: dict[FileState, frozenset[FileState]] = {
    FileState.SETTLING: frozenset({FileState.WAITING, FileState.REJECTED}),
    FileState.WAITING: frozenset(
        {FileState.CLAIMED, FileState.SETTLING, FileState.REJECTED, FileState.VANISHED}
    ),
    FileState.CLAIMED: frozenset(
        {
            FileState.WAITING,
            FileState.RESETTLING,
            FileState.DELIVERED,
            FileState.REJECTED,
            FileState.VANISHED,
        }
    ),
    FileState.RESETTLING: frozenset({FileState.CLAIMED, FileState.VANISHED}),
    FileState.DELIVERED: frozenset({FileState.DONE}),
    FileState.REJECTED: frozenset({FileState.FAILED}),
    FileState.DONE: frozenset(),
    FileState.FAILED: frozenset(),
    FileState.VANISHED: frozenset(),
}

DELIVERY_MOVES: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.ASSIGNED: frozenset(
        {
            DeliveryState.UPLOADING,
            DeliveryState.GONE,
            DeliveryState.REJECTED,
            DeliveryState.RELEASED,
        }
    ),
    DeliveryState.UPLOADING: frozenset(
        {
            DeliveryState.UPLOADED,
            DeliveryState.ASSIGNED,
            DeliveryState.GONE,
            DeliveryState.REJECTED,
            DeliveryState.RELEASED,
        }
    ),
    DeliveryState.UPLOADED: frozenset(),
    # Listed as waiting again after a 404 or 409 (a blip, or a lag in the server's list).
    DeliveryState.GONE: frozenset({DeliveryState.ASSIGNED}),
    DeliveryState.REJECTED: frozenset(),
    DeliveryState.RELEASED: frozenset(),
}

# In the drop folder and not yet taken: a new drop under the same name is the same file.
IN_DROP_FOLDER = frozenset({FileState.SETTLING, FileState.WAITING})
# Still the agent's work: shown as pending by ``pushagent status``.
PENDING = frozenset(
    {
        FileState.SETTLING,
        FileState.WAITING,
        FileState.CLAIMED,
        FileState.RESETTLING,
        FileState.DELIVERED,
        FileState.REJECTED,
    }
)
FINISHED = frozenset({FileState.DONE, FileState.FAILED, FileState.VANISHED})
OPEN_DELIVERIES = frozenset({DeliveryState.ASSIGNED, DeliveryState.UPLOADING})
# A job holding one of these no other file may be given.
RESERVING = frozenset(
    {
        DeliveryState.ASSIGNED,
        DeliveryState.UPLOADING,
        DeliveryState.UPLOADED,
        DeliveryState.REJECTED,
    }
)


class IllegalTransition(PushAgentError):
    """A move the table does not allow: a bug, refused before it reaches the journal."""


@functools.cache  # one frozenset per state, asked for every journal move
def sources_of(target: FileState) -> frozenset[FileState]:
    return frozenset(s for s, targets in FILE_MOVES.items() if target in targets)


@functools.cache  # one frozenset per state, asked for every journal move
def delivery_sources_of(target: DeliveryState) -> frozenset[DeliveryState]:
    return frozenset(s for s, targets in DELIVERY_MOVES.items() if target in targets)


# --- the pull side -------------------------------------------------------------------------------
# A job READY_FOR_DOWNLOAD for the pull endpoint:
#     DOWNLOADING -> ON_DISK -> DONE
# ON_DISK: every file is fsynced under its final name and job.json is written (the consumer's
# sign that the job is complete); what is left is the Exchange side (delete, complete). A job that
# stopped being ready before its files were all here is GONE (DOWNLOADING again if it is listed
# as ready again). One of its files: PENDING -> DOWNLOADED -> DELETED (at the Exchange); a
# downloaded file that vanished from the outbox before job.json was written is PENDING again.


class PullJobState(Enum):
    DOWNLOADING = "downloading"
    ON_DISK = "on_disk"
    DONE = "done"
    GONE = "gone"


class PullFileState(Enum):
    PENDING = "pending"
    DOWNLOADED = "downloaded"
    DELETED = "deleted"


PULL_JOB_MOVES: dict[PullJobState, frozenset[PullJobState]] = {
    PullJobState.DOWNLOADING: frozenset({PullJobState.ON_DISK, PullJobState.GONE}),
    PullJobState.ON_DISK: frozenset({PullJobState.DONE}),
    PullJobState.DONE: frozenset(),
    PullJobState.GONE: frozenset({PullJobState.DOWNLOADING}),
}

PULL_FILE_MOVES: dict[PullFileState, frozenset[PullFileState]] = {
    PullFileState.PENDING: frozenset({PullFileState.DOWNLOADED}),
    PullFileState.DOWNLOADED: frozenset({PullFileState.DELETED, PullFileState.PENDING}),
    PullFileState.DELETED: frozenset(),
}


@functools.cache  # one frozenset per state, asked for every journal move
def pull_job_sources_of(target: PullJobState) -> frozenset[PullJobState]:
    return frozenset(s for s, targets in PULL_JOB_MOVES.items() if target in targets)


@functools.cache  # one frozenset per state, asked for every journal move
def pull_file_sources_of(target: PullFileState) -> frozenset[PullFileState]:
    return frozenset(s for s, targets in PULL_FILE_MOVES.items() if target in targets)
