"""A long DICOM listing in forked workers gives what the one-by-one listing gives: the same images, keys and
positions per file, in order, the same noted pixel layouts (decoding then reads no header twice), unreadable
headers kept as None, and a file that raises in a worker raising here."""

import shutil

import pytest
from conftest import LUNG, SERIES_3

from medkeras.data.readers import dicom_layout, listing
from medkeras.errors import ResourceError


@pytest.fixture
def tcia_files(tmp_path):
    """Both real series under TCIA's repeated names, and a header that cannot be read."""
    paths = []
    for series, folder in (("2.000000-5mm-40805", LUNG), ("3.000000-5mm-41315", SERIES_3)):
        (tmp_path / series).mkdir()
        for name in ("1-01.dcm", "1-13.dcm", "1-14.dcm"):
            shutil.copy(folder / name, tmp_path / series / name)
            paths.append(tmp_path / series / name)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" + b"\x00" * 300)
    return [str(p) for p in paths[:3]] + [str(broken)] + [str(p) for p in paths[3:]]


def test_workers_list_as_the_serial_listing_does(tcia_files, monkeypatch):
    monkeypatch.setattr(dicom_layout, "_NOTED", type(dicom_layout._NOTED)())
    serial = listing.list_dicom(tcia_files)
    noted = dict(dicom_layout._NOTED)
    assert serial[3] is None and all(items for i, items in enumerate(serial) if i != 3)
    assert len({items[0].series for items in serial if items}) == 2  # two series under the same file names
    monkeypatch.setattr(dicom_layout, "_NOTED", type(dicom_layout._NOTED)())
    monkeypatch.setattr(listing, "PARALLEL_FROM", 1)
    monkeypatch.setattr(listing, "_workers", lambda n: 2)  # two workers even on one core
    assert listing.list_dicom(tcia_files) == serial
    assert dict(dicom_layout._NOTED) == noted and len(noted) == 6  # the workers' layouts, noted here
    assert dicom_layout.plain_hu(tcia_files[0]) is not None  # so decoding takes them without a parse


def test_a_file_that_raises_in_a_worker_raises_here(tcia_files, monkeypatch):
    from medkeras.data.readers import dicom_tags

    real = dicom_tags.dicom_items

    def out_of_memory(path, key_file=None):
        if str(path).endswith("3.000000-5mm-41315/1-13.dcm"):
            raise ResourceError(f"{path}: cannot read it now: out of memory")
        return real(path, key_file)

    monkeypatch.setattr(listing, "dicom_items", out_of_memory)  # the workers are forked: they see it too
    monkeypatch.setattr(listing, "_workers", lambda n: 2)
    with pytest.raises(ResourceError, match="41315/1-13.dcm: cannot read it now"):
        listing.list_dicom(tcia_files)


def test_no_processes_to_be_had_lists_one_by_one(tcia_files, monkeypatch):
    serial = listing.list_dicom(tcia_files)

    def refused(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")  # fork refused: a process limit, a sandbox

    monkeypatch.setattr(listing, "ProcessPoolExecutor", refused)
    monkeypatch.setattr(listing, "_workers", lambda n: 2)
    assert listing.list_dicom(tcia_files) == serial


def test_a_worker_forked_while_another_thread_notes_a_layout_gets_a_lock_of_its_own():
    """A notebook thread noting layouts at the moment a listing forks held the layout lock in the workers forever
    (found by a trial); a forked child now starts with a free lock."""
    import os

    with dicom_layout._LOCK:  # held at the fork, as by another thread
        pid = os.fork()
        if pid == 0:  # the child: its lock must be free
            os._exit(0 if dicom_layout._LOCK.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
