#!/usr/bin/env python3
"""Send threat signals to parry from Python (standard library only).

parry's control socket speaks newline-delimited JSON: one request object per
line, one response object per line. A signal is

    {"op": "signal", "kind": "auth_failure", "ip": "203.0.113.7",
     "user": "alice", "source": "webapp"}

and the answer says what happened, e.g.

    {"ok": true, "outcome": "counted", "progress": [...]}
    {"ok": true, "outcome": "decided", "decisions": [...]}
    {"ok": false, "error": {"code": "forbidden", "message": "..."}}

The sending user must be root, in control.admin_groups, or listed under
response.senders in /etc/parry/parry.yaml for the kinds it sends, and must be
able to open the socket (group "parry"). See docs/protocol.md and
docs/policy.md.

Use from a login handler:

    from parry_signal import Parry
    parry = Parry()            # one connection, reused; reconnects if needed

    def login(request):
        if not check_password(request.form["user"], request.form["password"]):
            parry.signal("auth_failure", ip=request.remote_addr,
                         user=request.form["user"], source="webapp")
            ...

Signals are advice: if parry is down, the login handler must go on, so
errors are reported but never raised unless strict=True.
"""

import json
import os
import socket
import sys
import threading

# like the parry CLI: $PARRY_SOCKET, else the default path
SOCKET = os.environ.get("PARRY_SOCKET", "/run/parry/parry.sock")


class ParryError(Exception):
    """parry answered ok=false; .code is the stable error code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


class Parry:
    def __init__(self, path=SOCKET, timeout=2.0, strict=False):
        self.path, self.timeout, self.strict = path, timeout, strict
        self._sock = None
        self._file = None
        self._lock = threading.Lock()

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self._sock, self._file = s, s.makefile("rwb")

    def close(self):
        if self._sock is not None:
            self._file.close()
            self._sock.close()
            self._sock = self._file = None

    def request(self, req):
        """Send one request object, return the response object."""
        line = (json.dumps(req, separators=(",", ":")) + "\n").encode()
        with self._lock:
            for attempt in (1, 2):  # one reconnect if the daemon restarted
                try:
                    if self._sock is None:
                        self._connect()
                    self._file.write(line)
                    self._file.flush()
                    resp = self._file.readline()
                    if not resp:
                        raise ConnectionError("parry closed the connection")
                    return json.loads(resp)
                except (OSError, ConnectionError):
                    self.close()
                    if attempt == 2:
                        raise

    def signal(self, kind, ip=None, user=None, source=None, severity=None,
               detail=None, **attrs):
        req = {"op": "signal", "kind": kind}
        for k, v in (("ip", ip), ("user", user), ("source", source),
                     ("severity", severity), ("detail", detail)):
            if v is not None:
                req[k] = v
        if attrs:
            req["attrs"] = {k: str(v) for k, v in attrs.items()}
        try:
            resp = self.request(req)
        except (OSError, ValueError) as e:
            if self.strict:
                raise
            print(f"parry: signal not sent: {e}", file=sys.stderr)
            return None
        if not resp.get("ok"):
            err = resp.get("error", {})
            if self.strict:
                raise ParryError(err.get("code"), err.get("message"))
            print(f"parry: signal refused: {err.get('code')}: {err.get('message')}",
                  file=sys.stderr)
        return resp


if __name__ == "__main__":
    # python3 parry_signal.py auth_failure 203.0.113.7 alice
    if len(sys.argv) < 2:
        sys.exit("usage: parry_signal.py KIND [IP [USER]]")
    p = Parry(strict=True)
    args = sys.argv[1:] + [None, None]
    print(json.dumps(p.signal(args[0], ip=args[1], user=args[2], source="example")))
