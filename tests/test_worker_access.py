"""Only the scheduler can call its workers: private runtime directory and sockets whatever the
umask, and a per-start secret in every worker call."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from scheduler.runtime import RuntimeDirError, private_runtime_dir

CONNECT = ("import socket, sys\n"
           "s = socket.socket(socket.AF_UNIX)\n"
           "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
           "    print(type(e).__name__); sys.exit(3)\nprint('connected')\n")


def test_runtime_dir_refused_when_others_can_write() -> None:
    base = tempfile.mkdtemp(dir="/tmp")
    try:
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        with pytest.raises(RuntimeDirError, match="other users can write"):
            private_runtime_dir(shared)
        fresh = os.path.join(base, "fresh")
        old = os.umask(0)
        try:
            private_runtime_dir(fresh)
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    finally:
        shutil.rmtree(base)


@pytest.mark.integration
@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as a second user")
def test_other_users_cannot_reach_workers(start_service, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    base = tempfile.mkdtemp(dir="/tmp")
    os.chmod(base, 0o755)  # others may traverse to the runtime dir: only its own mode protects
    runtime = os.path.join(base, "run")
    old = os.umask(0)
    try:
        svc = start_service(models_dir / "sensevoice-tiny", runtime_dir=runtime)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
        worker = svc.service.workers[0]
        sock = worker.socket_path
        assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0, oct(os.stat(sock).st_mode)
        # A second user cannot even connect.
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "/usr/bin/python3", "-c", CONNECT, sock],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 3 and "PermissionError" in out.stdout, out.stdout + out.stderr
        # Even this user, without the per-start secret, is refused by the worker itself.
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = wpb_grpc.WorkerStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetInfo(wpb.InfoRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Segment(iter([wpb.VadRequest(is_final=True)]), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            unit = wpb.WorkUnit(tag=1, request=wpb.TranscribeRequest(pcm=b"\0\0" * 1600))
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Work(iter([wpb.WorkRequest(units=[unit])]), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            live = wpb.TaggedLiveRequest(tag=1, request=wpb.LiveRequest(is_final=True))
            with pytest.raises(grpc.RpcError) as info:
                list(stub.LiveLink(iter([wpb.LiveLinkRequest(requests=[live])]), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert worker.ready  # the scheduler's own calls carry the secret
    finally:
        svc.stop()
        shutil.rmtree(base, ignore_errors=True)
