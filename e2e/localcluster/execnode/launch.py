"""Container launcher of the local exec node: runs in the child, then becomes the container's command.

Started by the agent as ``python -I -S launch.py <spec.json>`` (a script, not ``-m``: it must start fast and
import nothing but the standard library). It enters the pod's network namespace (or, for exec probes and
preStop hooks, the namespaces of a running container), unshares a private mount namespace, bind-mounts the
volumes at their ``mountPath`` (read-only where asked), changes to ``workingDir`` and ``exec``s the command.
If anything before the exec fails it writes the reason to ``start_error_file`` and exits 127, which the agent
reports as ``StartError``.
"""

import ctypes
import ctypes.util
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype=None, flags=0):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, None), f"mount {source} on {target}")


def setns(path, nstype):
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def ensure_target(target, is_dir, record):
    if os.path.lexists(target):
        return
    parent = os.path.dirname(target)
    missing = []
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if is_dir:
        os.mkdir(target)
    else:
        open(target, "a").close()
    if record is not None:
        os.write(record, "".join(p + "\n" for p in [target, *missing]).encode())


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    err_file = spec.get("start_error_file")
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the agent died before prctl took effect
            os._exit(137)
        if spec.get("join_pid"):
            pid = spec["join_pid"]
            setns(f"/proc/{pid}/ns/net", CLONE_NEWNET)
            setns(f"/proc/{pid}/ns/mnt", CLONE_NEWNS)
        else:
            if spec.get("netns"):
                setns(spec["netns"], CLONE_NEWNET)
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            mounts = sorted(spec.get("mounts", []), key=lambda m: m["target"].rstrip("/").count("/"))
            # Pin every source (and where errors go) before the first mount: a volume mounted over a parent
            # directory of the state dir (e.g. /tmp) would otherwise hide the later sources.
            sources = [(m, os.open(m["source"], os.O_PATH), os.path.isdir(m["source"])) for m in mounts]
            if err_file:
                err_dir = os.open(os.path.dirname(err_file), os.O_PATH | os.O_DIRECTORY)
                err_file = (err_dir, os.path.basename(err_file))
            record = spec.get("created_paths_file")
            record_fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if record else None
            for m, fd, is_dir in sources:
                dst = m["target"]
                ensure_target(dst, is_dir, record_fd)
                mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND | MS_REC)
                if m.get("readOnly"):
                    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                os.close(fd)
        cwd = spec.get("cwd") or "/"
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
    except OSError as exc:
        _fail(err_file, f"failed to create container: {exc}", 128)
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        _fail(err_file, f'exec: "{argv[0]}": executable file not found in $PATH', 127)
    except PermissionError:
        _fail(err_file, f'exec: "{argv[0]}": permission denied', 126)
    except OSError as exc:
        _fail(err_file, f'exec: "{argv[0]}": {exc.strerror}', 127)


def _fail(err_file, message, code):
    if isinstance(err_file, tuple):  # (directory fd, name): pinned before the mounts
        fd = os.open(err_file[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=err_file[0])
        os.write(fd, message.encode())
        os.close(fd)
    elif err_file:
        with open(err_file, "w") as f:
            f.write(message)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1])
