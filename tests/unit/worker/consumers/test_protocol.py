"""The reports between a consumer and its parent: one encoder, one parser, the same lines."""

from __future__ import annotations

import os

import pytest

from appliance.worker.consumers import protocol
from appliance.worker.consumers.protocol import Kind, LinkNotifier, ParentLink, Report


@pytest.mark.parametrize(
    "report",
    [
        Report(Kind.READY),
        Report(Kind.PROGRESS),
        protocol.started("tag-1", 360.0, "id-1", "demo.sleep for a while"),
        protocol.started(protocol.NO_TAG, 0.0, "id-2", "demo.noop"),
        protocol.ended("tag-2"),
        protocol.ended(None),
        Report(Kind.RETIRING_SOON),
        Report(Kind.RETIRING),
    ],
)
def test_every_report_reads_back_as_written(report: Report) -> None:
    line = protocol.encode(report)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.parse(line[:-1].decode()) == report


def test_the_lines_on_the_wire() -> None:
    started = protocol.started("t1", 360.0, "id-1", "demo.sleep")
    assert protocol.encode(started) == b"S t1 360 id-1 demo.sleep\n"
    assert protocol.encode(protocol.started("t1", 1.5, "i", "n")) == b"S t1 1.5 i n\n"
    assert protocol.encode(protocol.ended(None)) == b"E -\n"
    assert protocol.encode(protocol.ended("t2")) == b"E t2\n"
    assert [protocol.encode(Report(k)) for k in (Kind.READY, Kind.PROGRESS)] == [b"R\n", b"W\n"]
    assert [protocol.encode(Report(k)) for k in (Kind.RETIRING_SOON, Kind.RETIRING)] == [
        b"P\n",
        b"X\n",
    ]


def test_a_line_stays_shorter_than_an_atomic_pipe_write() -> None:
    line = protocol.encode(protocol.started("t", 0, "id", "n" * 10_000))
    assert len(line) == protocol.MAX_LINE_BYTES + 1 < 4096  # PIPE_BUF


@pytest.mark.parametrize("line", ["", "Q", "S t1 360 id-1", "S t1 soon id-1 demo.noop", "r"])
def test_a_line_that_is_no_report_is_ignored(line: str) -> None:
    assert protocol.parse(line) is None


def test_an_ack_that_fetched_nothing_reads_as_none() -> None:
    assert protocol.parse("E") == protocol.ended(None)
    assert protocol.parse("E -") == protocol.ended(None)


def test_a_successor_reports_ready_then_waits_at_its_gate_until_the_parent_opens_it() -> None:
    report_r, report_w = os.pipe()
    gate_r, gate_w = os.pipe()
    try:
        os.close(gate_w)  # the parent opened the gate: the read returns at EOF
        notifier = LinkNotifier(ParentLink(report_w, gate_r))
        assert notifier.enabled and notifier.ready("ignored") and notifier.watchdog()
        assert os.read(report_r, 100) == b"R\nW\n"
        with pytest.raises(OSError):
            os.fstat(gate_r)  # closed after it passed
    finally:
        os.close(report_r)
        os.close(report_w)


def test_a_gone_parent_is_no_error() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    link = ParentLink(write_fd)
    link.send(Report(Kind.PROGRESS))  # EPIPE (SIGPIPE is ignored by Python): dropped
    os.close(write_fd)
