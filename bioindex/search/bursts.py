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
from collections.abc import Iterable, Sequence
from datetime import datetime

from bioindex.store import Store
from bioindex.uris import member_of

GAP_SECONDS = 60.0
SPAN_SECONDS = 900.0


def folder_of(uri: str) -> str:
    """The folder a frame sits in (inside its archive, for a member of one)."""
    member = member_of(uri)
    if member is not None:
        return member[0] + "#" + os.path.dirname(member[1])
    return os.path.dirname(uri)


def time_bursts(rows: Iterable[tuple], gap: float = GAP_SECONDS,
                span: float = SPAN_SECONDS) -> dict[int, str]:  # fmt: skip
    """image_id → its burst ("FOLDER FIRST-FRAME-TIME", and the name its frames are given
    if any), for the frames of `rows` (image_id, uri, event_date to the second[, name], as
    Catalog.timed_rows gives them) that share a burst with another; a frame alone in its
    burst is left out, as a frame with no eventID is. Frames named apart stay apart, as
    an eventID's do (two animals in one trigger)."""
    by_folder: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
    for image_id, uri, taken, *named in rows:
        try:  # the clock's own reading: a UTC offset is the same for a camera's frames
            when = datetime.fromisoformat(str(taken)[:19])
        except ValueError:
            continue
        key = (folder_of(str(uri)), str(named[0] or "") if named else "")
        by_folder.setdefault(key, []).append((when, int(image_id)))
    bursts: dict[int, str] = {}
    for (folder, name), frames in by_folder.items():
        frames.sort()
        run: list[tuple[datetime, int]] = []
        for frame in frames:
            if run and ((frame[0] - run[-1][0]).total_seconds() > gap
                        or (frame[0] - run[0][0]).total_seconds() > span):  # fmt: skip
                _name(run, folder, name, bursts)
                run = []
            run.append(frame)
        _name(run, folder, name, bursts)
    return bursts


def _name(run: list[tuple[datetime, int]], folder: str, name: str,
          bursts: dict[int, str]) -> None:  # fmt: skip
    if len(run) > 1:
        # The folder's own name (a camera's, "cam3"), inside an archive too.
        last = folder.rstrip("/#" + os.sep).replace("#", "/").replace(os.sep, "/")
        key = f"{last.rsplit('/', 1)[-1] or folder} {run[0][0].isoformat()}"
        key += f" {name}" if name else ""
        bursts.update((image_id, key) for _, image_id in run)


def _by_clock(groups: Sequence[str]) -> list[bool]:
    """Which catalog groups (Catalog.photo_groups) say nothing of a burst: a photo's own
    bytes or id, neither an eventID nor an occurrence."""
    return [g.startswith(("bytes ", "image ")) for g in groups]


def photo_groups(store: Store, image_ids: Sequence[int]) -> list[str]:
    """Catalog.photo_groups, a photo with no eventID or occurrence put in its burst by the
    clock where it has one (an SD card's frames named in a table without eventIDs: a
    frame held out from a head that learnt its burst mates tests it on what it learnt)."""
    groups = store.catalog.photo_groups(image_ids)
    bursts = time_bursts(store.catalog.timed_rows(image_ids))
    return [f"clock {bursts[int(i)]}" if free and int(i) in bursts else group
            for i, group, free in zip(image_ids, groups, _by_clock(groups))]  # fmt: skip


def group_mates(store: Store, image_ids: Sequence[int]) -> dict[int, list[int]]:
    """Catalog.group_mates, with the other frames of a burst by the clock (photo_groups)."""
    mates = store.catalog.group_mates(image_ids)
    groups = store.catalog.photo_groups(image_ids)
    asked = [int(i) for i, free in zip(image_ids, _by_clock(groups)) if free]
    if not asked:
        return mates
    bursts = time_bursts(store.catalog.timed_rows())  # mates may be any live frames
    members: dict[str, list[int]] = {}
    for image_id, burst in bursts.items():
        members.setdefault(burst, []).append(image_id)
    for image_id in asked:
        if image_id in bursts:
            others = [m for m in members[bursts[image_id]] if m != image_id]
            mates[image_id] = sorted({*mates.get(image_id, ()), *others})
    return mates
