"""What a user's tests look like: files written through the mount are objects in the bucket,
and objects put in the bucket are files."""

from __future__ import annotations


def test_a_file_written_is_an_object(storagefs_mount):
    reports = storagefs_mount.path / "reports"
    reports.mkdir()
    (reports / "daily.csv").write_text("day,total\n1,42\n")

    obj = storagefs_mount.client.get_object(Bucket=storagefs_mount.bucket, Key="reports/daily.csv")
    assert obj["Body"].read() == b"day,total\n1,42\n"


def test_an_object_put_is_a_file(storagefs_mount):
    storagefs_mount.client.put_object(
        Bucket=storagefs_mount.bucket, Key="inbox/order.json", Body=b'{"id": 1}'
    )
    assert (storagefs_mount.path / "inbox" / "order.json").read_bytes() == b'{"id": 1}'
    assert [p.name for p in (storagefs_mount.path / "inbox").iterdir()] == ["order.json"]


def test_every_test_gets_an_empty_bucket(storagefs_mount):
    assert [p.name for p in storagefs_mount.path.iterdir()] == []
    assert storagefs_mount.client.list_objects_v2(Bucket=storagefs_mount.bucket)["KeyCount"] == 0
