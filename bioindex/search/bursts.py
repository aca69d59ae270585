"""A camera trap's bursts told by the clock: frames of one folder (one camera) taken close
together are one trigger's views of one animal, when no eventID says so.

A new burst starts after a gap of more than GAP_SECONDS between frames of a folder, and
after SPAN_SECONDS from its first frame (a time-lapse camera, or an animal resting in
view for hours, would otherwise chain every frame into one). TrapTagger clusters the
images of a site taken within one minute of each other, up to 15 minutes
(wildeyeconservation.org, "trigger source" update); ABMI found an animal almost always
still in view across gaps under 20 s, and almost always gone and back after 120 s
(abmi.camera.extras, "gaps").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime

from bioindex.uris import member_of

GAP_SECONDS = 60.0
SPAN_SECONDS = 900.0


def folder_of(uri: str) -> str:
    """The folder a frame sits in (inside its archive, for a member of one)."""
    member = member_of(uri)
    if member is not None:
        return member[0] + "#" + os.path.dirname(member[1])
    return os.path.dirname(uri)


def time_bursts(rows: Iterable[tuple[int, str, str]], gap: float = GAP_SECONDS,
                span: float = SPAN_SECONDS) -> dict[int, str]:  # fmt: skip
    """image_id → its burst ("FOLDER FIRST-FRAME-TIME"), for the frames of `rows` (image_id,
    uri, event_date to the second) that share a burst with another; a frame alone in its
    burst is left out, as a frame with no eventID is."""
    by_folder: dict[str, list[tuple[datetime, int]]] = {}
    for image_id, uri, taken in rows:
        try:  # the clock's own reading: a UTC offset is the same for a camera's frames
            when = datetime.fromisoformat(str(taken)[:19])
        except ValueError:
            continue
        by_folder.setdefault(folder_of(str(uri)), []).append((when, int(image_id)))
    bursts: dict[int, str] = {}
    for folder, frames in by_folder.items():
        frames.sort()
        run: list[tuple[datetime, int]] = []
        for frame in frames:
            if run and ((frame[0] - run[-1][0]).total_seconds() > gap
                        or (frame[0] - run[0][0]).total_seconds() > span):  # fmt: skip
                _name(run, folder, bursts)
                run = []
            run.append(frame)
        _name(run, folder, bursts)
    return bursts


def _name(run: list[tuple[datetime, int]], folder: str, bursts: dict[int, str]) -> None:
    if len(run) > 1:
        # The folder's own name (a camera's, "cam3"), inside an archive too.
        last = folder.rstrip("/#" + os.sep).replace("#", "/").replace(os.sep, "/")
        name = f"{last.rsplit('/', 1)[-1] or folder} {run[0][0].isoformat()}"
        bursts.update((image_id, name) for _, image_id in run)
