from __future__ import annotations

import json
import os
from pathlib import Path, PurePath

from pushagent.outcomes import move_without_overwrite, write_error_report


def test_moves_keep_the_name_and_never_overwrite(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    (done / "45311.csv").write_text("older\n")
    src = tmp_path / "45311.csv"
    src.write_text("newer\n")
    target = move_without_overwrite(src, done, PurePath("45311.csv"))
    assert target == done / "45311-2.csv"
    assert target.read_text() == "newer\n"
    assert (done / "45311.csv").read_text() == "older\n"
    assert not src.exists()


def test_a_symlink_moves_as_a_link_and_its_target_stays(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    link = tmp_path / "drop.csv"
    os.symlink(secret, link)
    failed = tmp_path / "failed"
    target = move_without_overwrite(link, failed, PurePath("drop.csv"))
    assert target.is_symlink() and os.readlink(target) == str(secret)
    assert secret.read_text() == "s3cret\n"


def test_a_directory_named_like_a_csv_moves_whole(tmp_path: Path) -> None:
    odd = tmp_path / "x.csv"
    odd.mkdir()
    (odd / "inner").write_text("1")
    target = move_without_overwrite(odd, tmp_path / "failed", PurePath("x.csv"))
    assert (target / "inner").read_text() == "1"


def test_error_report_sits_beside_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    target.write_text("x")
    report = write_error_report(target, {"file": "a.csv", "reason": "line 2: bad"})
    assert report == tmp_path / "a.csv.error.json"
    assert json.loads(report.read_text())["reason"] == "line 2: bad"
