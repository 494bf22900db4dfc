"""py-spy's raw samples, grouped by library (bench/_profile.py), on a made-up profile."""

from __future__ import annotations

from bench._profile import INTERPRETER, REPO, STDLIB, library, parse_frame, summarize

SITE = f"{REPO}/.venv/lib/python3.11/site-packages"
LOOP = ";".join(
    (
        f"run_forever ({STDLIB}/asyncio/base_events.py:607)",
        f"_run_once ({STDLIB}/asyncio/base_events.py:1922)",
        f"_run ({STDLIB}/asyncio/events.py:80)",
        "task_step (/tmp/python-build/Python-3.11.7/Modules/_asynciomodule.c:2990)",
    )
)
RAW = [
    # 3 samples in msgspec's C code, called from adstream's codec.
    f"thread (1): MainThread;{LOOP};handle ({REPO}/streams/worker/route_stage.py:55);"
    f"decode_request ({REPO}/models/codec.py:40);"
    f"json_decode ({SITE}/msgspec/_core.cpython-311-x86_64-linux-gnu.so) 3\n",
    # 2 samples in aiokafka, the leaf a native frame of the interpreter: charged to aiokafka.
    f"thread (1): MainThread;{LOOP};_send_produce_req ({SITE}/aiokafka/producer/sender.py:300);"
    "_PyObject_Malloc (/tmp/python-build/Python-3.11.7/Objects/obmalloc.c:1966) 2\n",
    # 5 samples of the consumer thread, in Faust, outside any event loop callback.
    f"thread (2): Thread-1;_run_loop ({SITE}/faust/transport/consumer.py:900) 5\n",
    "\n",
]


def test_frames_and_libraries() -> None:
    frame = parse_frame(f"get ({SITE}/httpx/_models.py:12)")
    assert (frame.function, frame.name) == ("get", "get (httpx/_models.py)")
    assert parse_frame("0x7f00 (/usr/lib/libc.so.6)").file == "/usr/lib/libc.so.6"
    assert library(f"{SITE}/faust/streams.py") == "faust"
    assert library(f"{SITE}/_cffi_backend.cpython-311-x86_64-linux-gnu.so") == "cffi_backend"
    assert library(f"{REPO}/streams/worker/app.py") == "adstream"
    assert library(f"{REPO}/models/codec.py") == "adstream"
    assert library(f"{REPO}/bench/_peer.py") == "bench"
    assert library(f"{STDLIB}/asyncio/events.py") == "stdlib asyncio"
    assert library(f"{STDLIB}/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so") == "stdlib ssl"
    assert library("/tmp/python-build/Python-3.11.7/Modules/socketmodule.c") == "stdlib socket"
    assert library("/tmp/python-build/Python-3.11.7/Python/ceval.c") is None


def test_summary_groups_samples_by_library_thread_and_callback() -> None:
    summary = summarize(RAW, rate=25)
    assert summary["samples"] == 10
    assert summary["rate"] == 25

    def table(key: str) -> dict[str, int]:
        return {name: count for name, count, _share in summary[key]}

    assert table("threads") == {"MainThread": 5, "Thread-1": 5}
    assert table("self_by_library") == {"faust": 5, "msgspec": 3, "aiokafka": 2}
    cumulative = table("cumulative_by_library")
    assert cumulative["adstream"] == 3
    assert cumulative["stdlib asyncio"] == 5
    assert INTERPRETER not in cumulative
    assert table("by_loop_callback") == {
        "(outside the event loop)": 5,
        "adstream: handle": 3,
        "aiokafka: _send_produce_req": 2,
    }
    assert table("by_loop_path") == {
        "(outside the event loop)": 5,
        "adstream: handle > adstream: decode_request > msgspec: json_decode": 3,
        "aiokafka: _send_produce_req": 2,
    }
    functions = table("cumulative_by_function")
    assert functions["adstream: decode_request (models/codec.py)"] == 3
    # The event loop's own frames, under which every callback runs, are left out.
    assert not any("_run_once" in name for name in functions)
    shares = [share for _name, _count, share in summary["self_by_library"]]
    assert abs(sum(shares) - 1) < 1e-9
