"""The first program of every process `EmbeddedPostgres` starts: it sets the process up and execs.

Run as ``python -I -S launch.py REPORT_FD PARENT_PID UID GID PROGRAM [ARG...]``:

1. switch to the user UID and group GID, with no supplementary groups (skipped
   when UID is -1);
2. have the kernel send SIGINT when the parent dies (after the switch of user,
   which clears that setting), and give up if the parent is already gone;
3. exec PROGRAM. If any step fails, write why to the file descriptor REPORT_FD
   and exit with status 127; exec closes REPORT_FD, so the parent reading it to
   the end without a word knows PROGRAM runs.

The set-up is a program of its own, rather than a ``preexec_fn``, so that the
service never runs code in a forked copy of itself: a forked child of a process
with gRPC threads may crash before it reaches exec (grpc/grpc#43055). Without a
``preexec_fn`` or a change of user, Python starts this script with vfork, which
runs nothing of the parent's between fork and exec.

This file imports nothing but the standard library: ``-S`` starts Python
without ``site`` to keep the launch short.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Set the process up as described above and exec the program; return only on failure."""
    report, parent, uid, gid = (int(arg) for arg in argv[:4])
    program = argv[4:]
    os.set_inheritable(report, False)
    step = f"switch to uid {uid}"
    try:
        if uid != -1:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        step = "set PR_SET_PDEATHSIG"
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        # The parent may have died before the setting took effect.
        if os.getppid() != parent:
            os._exit(1)
        step = "run " + program[0]
        os.execv(program[0], program)
    except OSError as exc:
        os.write(report, f"cannot {step}: {exc.strerror}".encode())
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
