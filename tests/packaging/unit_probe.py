"""Stand-in for the daemon under the real unit (test_units_live.sh): it reports what the
sandbox lets it do, speaks the notify protocol, and records SIGHUP (ExecReload).

The real daemon needs torch and a model; this checks the unit file, not the daemon.
"""
import json, os, signal, socket, time

import sdnotify

res = {"uid": os.getuid(), "groups": sorted(os.getgroups()), "env": {k: os.environ.get(k) for k in
       ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CACHE_DIRECTORY", "TORCHINDUCTOR_CACHE_DIR", "HOME", "NOTIFY_SOCKET", "WATCHDOG_USEC")}}
def attempt(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = f"{type(e).__name__}: {e.strerror}"
attempt("write_state", lambda: open(os.path.join(os.environ["STATE_DIRECTORY"], "x"), "w").write("1"))
attempt("mkdir_inductor_cache", lambda: os.makedirs(os.environ["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True))
attempt("write_usr", lambda: open("/usr/lib/ishowtts-edge/x", "w"))
attempt("write_etc", lambda: open("/etc/ishowtts-edge/x", "w"))
attempt("read_home", lambda: os.listdir("/root"))
attempt("af_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("af_netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
attempt("chown", lambda: os.chown(os.environ["STATE_DIRECTORY"] + "/x", 0, 0))
attempt("open_dev_null", lambda: open("/dev/null", "w"))
attempt("open_dev_mem", lambda: open("/dev/mem", "rb"))
sock_path = os.path.join(os.environ["RUNTIME_DIRECTORY"], "tts.sock")
s = socket.socket(socket.AF_UNIX); s.bind(sock_path); s.listen()
res["socket_mode"] = oct(os.stat(sock_path).st_mode & 0o777)
w = os.open("/usr/lib/ishowtts-edge/venv/bin/python", os.O_RDONLY); os.close(w)
n = sdnotify.SystemdNotifier()
n.notify("STATUS=probe warming up"); n.notify("EXTEND_TIMEOUT_USEC=30000000"); time.sleep(1)
open(os.path.join(os.environ["STATE_DIRECTORY"], "probe.json"), "w").write(json.dumps(res, indent=1))
n.notify("READY=1"); n.notify("STATUS=probe serving")


def on_hup(signum, frame):
    n.notify("RELOADING=1")
    open(os.path.join(os.environ["STATE_DIRECTORY"], "reloaded"), "w").write("1")
    n.notify("READY=1")


signal.signal(signal.SIGHUP, on_hup)
while True:
    n.notify("WATCHDOG=1")
    time.sleep(5)
