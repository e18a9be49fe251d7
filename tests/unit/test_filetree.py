"""The tree walk and the safe open both verifiers read through (`orchestrator.shared.filetree`)."""

import hashlib
import os

import pytest

from orchestrator.shared.filetree import MAX_DEPTH, Refused, digest_file, read_file, shown, walk
from tests.helpers.hostile_files import deep_chain, fifo_unblocked


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_a_regular_file_is_hashed_whole(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"x" * (9 << 20))  # more than one read
    assert digest_file(tmp_path, "sub/a.bin", hashlib.sha256(), 9 << 20) == sha(b"x" * (9 << 20))


def test_what_is_not_a_regular_file_with_one_name_is_refused_without_blocking(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.bin").write_bytes(b"a")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "real" / "a.bin")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "real", target_is_directory=True)
    os.link(tmp_path / "real" / "a.bin", tmp_path / "second-name")
    refusals = {
        "fifo": "not a regular file (a FIFO)",
        "link": "a symbolic link",
        "linked-dir/a.bin": "not reached through directories alone",
        "real": "not a regular file (a directory)",
        "second-name": "a hard link (one file under 2 names",
    }
    with fifo_unblocked(tmp_path / "fifo"):
        for name, what in refusals.items():
            with pytest.raises(Refused, match=what.replace("(", r"\(").replace(")", r"\)")):
                digest_file(tmp_path, name, hashlib.sha256())
    with pytest.raises(FileNotFoundError):
        digest_file(tmp_path, "absent", hashlib.sha256())


def test_a_size_other_than_the_manifests_is_refused_before_reading(tmp_path):
    (tmp_path / "sparse").write_bytes(b"")
    os.truncate(tmp_path / "sparse", 1 << 40)  # a terabyte of holes: reading it would take hours
    with pytest.raises(Refused, match=f"{1 << 40} bytes, the manifest says 12"):
        digest_file(tmp_path, "sparse", hashlib.sha256(), 12)
    with pytest.raises(Refused, match="more than the 1,024 it may have"):
        read_file(tmp_path, "sparse", 1024)


def test_the_walk_sorts_what_is_there_by_kind(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"123")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "fifo")
    tree = walk(tmp_path)
    assert tree.files == {"a/f": 3} and tree.links == ["link"] and tree.empty_dirs == ["empty"]
    assert tree.others == [("fifo", "not a regular file (a FIFO)")]


def test_the_walk_stops_at_its_depth_instead_of_recursing(tmp_path):
    with deep_chain(tmp_path / "top"):
        tree = walk(tmp_path)
    (name, what), = tree.others
    assert name == "/".join(["top", *["d"] * MAX_DEPTH]) and what == f"a directory more than {MAX_DEPTH} levels deep"


def test_names_are_shown_on_one_line():
    assert shown("model.safetensors") == "model.safetensors" and shown("ünïcode") == "ünïcode"
    assert shown("x\nerror: forged") == "'x\\nerror: forged'"
    assert shown("bad\udcffbyte") == "'bad\\udcffbyte'"
