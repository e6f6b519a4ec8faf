from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path, PurePath

import pytest

from pushagent.outcomes import (
    error_report_path,
    fallback_report_path,
    move_to,
    name_limit,
    report_path_for,
    unique_target,
    write_error_report,
)


def move_unique(src: Path, folder: Path, relative: PurePath) -> Path:
    """What the agent does with a finished file: a free name, then a move to exactly it."""
    target = unique_target(folder, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    move_to(src, target)
    return target


def test_moves_keep_the_name_and_never_overwrite(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    (done / "45311.csv").write_text("older\n")
    src = tmp_path / "45311.csv"
    src.write_text("newer\n")
    target = move_unique(src, done, PurePath("45311.csv"))
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
    target = move_unique(link, failed, PurePath("drop.csv"))
    assert target.is_symlink() and os.readlink(target) == str(secret)
    assert secret.read_text() == "s3cret\n"


def test_a_directory_named_like_a_csv_moves_whole(tmp_path: Path) -> None:
    odd = tmp_path / "x.csv"
    odd.mkdir()
    (odd / "inner").write_text("1")
    target = move_unique(odd, tmp_path / "failed", PurePath("x.csv"))
    assert (target / "inner").read_text() == "1"


def test_error_report_sits_beside_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    target.write_text("x")
    report = write_error_report(target, {"file": "a.csv", "reason": "line 2: bad"})
    assert report == tmp_path / "a.csv.error.json"
    assert json.loads(report.read_text())["reason"] == "line 2: bad"


def size(name: str) -> int:
    return len(os.fsencode(name))


def limit_of(value: int) -> Callable[[Path], int]:
    def name_max(_folder: Path) -> int:
        return value

    return name_max


def test_the_name_limit_is_the_folders_or_its_nearest_parents(tmp_path: Path) -> None:
    assert name_limit(tmp_path) == os.pathconf(tmp_path, "PC_NAME_MAX")
    assert name_limit(tmp_path / "not" / "yet") == name_limit(tmp_path)


def test_a_254_byte_name_dropped_twice_fits_with_its_report(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    name = "s" * 250 + ".csv"
    assert size(name) == 254
    paths = []
    for content in ("first\n", "second\n"):
        src = tmp_path / name
        src.write_text(content)
        target = move_unique(src, failed, PurePath(name))
        report = write_error_report(target, {"file": name, "reason": "bad"})
        assert report == error_report_path(target), "the usual report name fits"
        assert size(report.name) <= 255 and size(f".{report.name}.partial") > 255
        paths.append(target)
    first, second = paths
    assert first != second and second.name.endswith("-2.csv")
    assert size(second.name) <= 255 - len(".error.json")
    assert first.read_text() == "first\n" and second.read_text() == "second\n"
    assert sorted(p.name for p in failed.iterdir()) == sorted(
        [first.name, second.name, first.name + ".error.json", second.name + ".error.json"]
    ), "no partial file is left behind"


def test_a_name_that_fits_with_its_report_is_kept(tmp_path: Path) -> None:
    name = "d" * 240 + ".csv"  # 244 bytes; its report 255
    assert unique_target(tmp_path, PurePath(name)) == tmp_path / name
    (tmp_path / name).write_text("x")
    second = unique_target(tmp_path, PurePath(name))
    assert second.name == "d" * 238 + "-2.csv" and size(second.name + ".error.json") == 255


def test_multibyte_names_are_cut_between_characters(tmp_path: Path) -> None:
    name = "é" * 100 + "日本" + ".csv"  # 210 bytes
    fake = limit_of(60)
    first = unique_target(tmp_path, PurePath(name), name_max=fake)
    first.write_text("x")
    second = unique_target(tmp_path, PurePath(name), name_max=fake)
    # 60 - len(".error.json") leaves 49 bytes: 45 for the stem, then 43; both odd, so a cut
    # at the byte would split an "é" (2 bytes).
    assert first.name == "é" * 22 + ".csv"
    assert second.name == "é" * 21 + "-2.csv"
    for target in (first, second):
        assert size(error_report_path(target).name) <= 60
        assert target.name.encode("utf-8").decode("utf-8") == target.name


def test_undecodable_bytes_count_as_one_byte_each(tmp_path: Path) -> None:
    name = os.fsdecode(b"\xff" * 300 + b".csv")
    target = unique_target(tmp_path, PurePath(name), name_max=limit_of(100))
    assert os.fsencode(target.name) == b"\xff" * 85 + b".csv"  # 100 - len(".error.json")


def test_an_extension_longer_than_the_limit_is_shortened_too(tmp_path: Path) -> None:
    name = "a." + "x" * 300
    target = unique_target(tmp_path, PurePath(name), name_max=limit_of(50))
    assert target.name == name[:39]


def test_names_inside_a_segment_folder_keep_the_folder(tmp_path: Path) -> None:
    relative = PurePath("45311") / ("n" * 300 + ".csv")
    target = unique_target(tmp_path, relative, name_max=limit_of(40))
    assert target == tmp_path / "45311" / ("n" * 25 + ".csv")


def test_a_name_whose_report_exists_is_taken(tmp_path: Path) -> None:
    (tmp_path / "a.csv.error.json").write_text("{}")
    assert unique_target(tmp_path, PurePath("a.csv")) == tmp_path / "a-2.csv"
    fallback_report_path(tmp_path / "b.csv").write_text("{}")  # written where names were short
    assert unique_target(tmp_path, PurePath("b.csv")) == tmp_path / "b-2.csv"


def test_a_report_name_too_long_for_the_folder_falls_back_to_a_short_one(tmp_path: Path) -> None:
    target = tmp_path / ("r" * 250 + ".csv")  # "<name>.error.json" would be 265 bytes
    target.write_text("x")
    report = write_error_report(target, {"file": "45311/" + target.name, "reason": "bad"})
    assert report == fallback_report_path(target) == report_path_for(target)
    assert report.name == "r" * 100 + f"-{report.name[101:109]}.error.json"
    body = json.loads(report.read_text())
    assert body == {"file": "45311/" + target.name, "reason": "bad", "target": target.name}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, report.name])


def test_the_fallback_follows_the_injected_name_limit(tmp_path: Path) -> None:
    target = tmp_path / "a-rather-long-segment-name.csv"  # 30 bytes; its report 41
    report = write_error_report(target, {"reason": "bad"}, name_max=limit_of(40))
    assert report == fallback_report_path(target)
    assert json.loads(report.read_text())["file"] == target.name
    assert report_path_for(target) == report


def test_targets_sharing_a_long_start_get_their_own_fallback_reports(tmp_path: Path) -> None:
    a, b = (tmp_path / ("p" * 240 + tail) for tail in ("-a.csv", "-b.csv"))
    report_a = write_error_report(a, {"reason": "a"})
    report_b = write_error_report(b, {"reason": "b"})
    assert report_a != report_b and report_path_for(b) == report_b
    assert json.loads(report_b.read_text())["reason"] == "b"


def test_no_report_is_found_for_a_file_without_one(tmp_path: Path) -> None:
    assert report_path_for(tmp_path / ("q" * 254)) is None
    assert report_path_for(tmp_path / "q.csv") is None


def test_other_errors_propagate_and_no_fallback_is_written(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "a.csv"  # the folder is missing: ENOENT, not a name problem
    with pytest.raises(OSError) as raised:
        write_error_report(target, {"reason": "bad"})
    assert raised.value.errno == errno.ENOENT
    assert report_path_for(target) is None


def test_move_to_takes_exactly_the_name_or_refuses(tmp_path: Path) -> None:
    src, target = tmp_path / "a.csv", tmp_path / "claimed" / "a.csv"
    src.write_text("data\n")
    target.parent.mkdir()
    move_to(src, target)
    assert target.read_text() == "data\n" and not os.path.lexists(src)
    src.write_text("newer\n")
    with pytest.raises(FileExistsError):
        move_to(src, target)
    assert target.read_text() == "data\n" and src.read_text() == "newer\n"
