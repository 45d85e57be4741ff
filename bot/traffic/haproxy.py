"""HAProxy as the Router: a pipeline's server slots, moved through HAProxy 2.6's runtime API.

The runtime API (`stats socket … level admin`) takes one line per connection, runs it and
closes. Commands on a line are separated by `;` and run in order; each answer ends with an
empty line. HAProxy runs the later commands of a line even when an earlier one failed, so one
line only holds commands that may all run whatever the others answer: a command that must not
run after a refusal (a slot set `ready` after its address was refused) goes in a later line,
sent only once every answer of the line before it was checked.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bot.domain.config import PipelinesConfig, Traffic, is_loopback, parse_address
from bot.domain.traffic import port_of, server_name
from bot.ports import TrafficError

TIMEOUT = 1.0
"""Seconds to connect, and to read a whole answer: HAProxy answers in well under 1 ms."""

MAX_LINE = 8192
"""HAProxy reads a command line into one buffer (bufsize 16384): longer batches are split."""

# srv_admin_state flags (HAProxy's server-t.h). CMAINT (0x04) only remembers that the config
# said `disabled`: a slot set `ready` at run time keeps it, so it is not maintenance.
ADMIN_MAINT = 0x01 | 0x02 | 0x20  # forced, inherited, address resolution
ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited

SLOT_HOST = "127.0.0.1"

# `set server … addr A port P` answers what it changed, or an error that may begin the same
# way ("no need to change the addr, problem converting port …"): only these two shapes are
# success, and the port part must name the port asked for.
_ADDR_DONE = re.compile(
    r"(?:IP changed from '[^']*' to '(?P<ip>[^']*)'|no need to change the addr), "
    r"(?:port changed from '\d+' to '(?P<port>\d+)'|no need to change the port)"
    r" by '[^']*'"
)


@dataclass(frozen=True)
class Slot:
    """One server of a backend, as `show servers state` tells it."""

    name: str
    address: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int
    weight: int  # the user weight, 0-256

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT)

    @property
    def draining(self) -> bool:
        return not self.in_maint and bool(self.admin_state & ADMIN_DRAIN)

    @property
    def ready(self) -> bool:
        return not self.admin_state & (ADMIN_MAINT | ADMIN_DRAIN)

    def serves(self, port: int) -> bool:
        """Ready, and sending to the version on `port` (not the template's placeholder)."""
        return self.ready and self.address == SLOT_HOST and self.port == port


class RuntimeApi:
    """One HAProxy runtime API: a unix socket path, or a loopback `host:port`."""

    def __init__(self, where: str, timeout: float = TIMEOUT) -> None:
        self.where = where
        self.timeout = timeout
        self._unix = where.startswith("/")
        self._address: tuple[str, int] = ("", 0)
        if not self._unix:
            try:
                self._address = parse_address(where, "traffic.runtime_api")
            except ValueError as exc:
                raise TrafficError(str(exc)) from exc
            if not is_loopback(self._address[0]):
                raise TrafficError(
                    f"HAProxy's runtime API {where}: only a unix socket or a loopback address "
                    "is accepted (the API has no authentication)"
                )

    def ask(self, command: str) -> str:
        """One command's answer, without its closing empty line."""
        return self.batch([command])[0]

    def batch(self, commands: Sequence[str]) -> list[str]:
        """Run `commands` in order, on one line per connection; the answer of each.

        TrafficError if HAProxy cannot be reached or the line's answers are cut short. The
        answers are not judged here: HAProxy's words are the caller's to read.
        """
        for command in commands:
            if not command or any(c in command for c in ";\n\\"):
                raise TrafficError(f"not a runtime API command: {command!r}")
        answers: list[str] = []
        for line in _lines(commands):
            raw = self._exchange("; ".join(line))
            got = _split_answers(raw)
            if len(got) < len(line):
                raise TrafficError(
                    f"HAProxy at {self.where} closed before answering `{line[len(got)]}` "
                    f"(got {raw[-200:]!r})"
                )
            answers += got[: len(line)]
        return answers

    def _exchange(self, line: str) -> str:
        deadline = time.monotonic() + self.timeout
        try:
            if self._unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.where)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, timeout=self.timeout)
            with sock:
                sock.sendall(line.encode() + b"\n")
                chunks: list[bytes] = []
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("no complete answer")
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except TimeoutError:
            raise TrafficError(
                f"HAProxy's runtime API at {self.where} did not answer within "
                f"{self.timeout:g} s (`{_first(line)}`)"
            ) from None
        except OSError as exc:
            raise TrafficError(
                f"HAProxy's runtime API at {self.where} cannot be reached "
                f"({exc.strerror or type(exc).__name__}; `{_first(line)}`)"
            ) from exc
        return b"".join(chunks).decode("utf-8", errors="replace")


class HAProxyRouter:
    """`ports.Router` over HAProxy's runtime API; each pipeline's `traffic.runtime_api` says
    which HAProxy, and its `traffic.backend` holds one slot `v<port>` per port."""

    def __init__(self, runtime_apis: Iterable[str] = (), *, timeout: float = TIMEOUT) -> None:
        """Args:
        runtime_apis: the HAProxies `health()` asks (those the pipelines name).
        """
        self.runtime_apis = sorted(set(runtime_apis))
        self.timeout = timeout

    @classmethod
    def for_config(cls, config: PipelinesConfig, *, timeout: float = TIMEOUT) -> HAProxyRouter:
        return cls(
            (p.traffic.runtime_api for p in config.pipelines.values() if p.traffic is not None),
            timeout=timeout,
        )

    # Reading ------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        proxies = [self._info(where) for where in self.runtime_apis]
        return {"ok": all(proxy["ok"] for proxy in proxies), "proxies": proxies}

    def _info(self, where: str) -> dict[str, object]:
        try:
            answer = RuntimeApi(where, self.timeout).ask("show info")
        except TrafficError as exc:
            return {"runtime_api": where, "ok": False, "error": exc.reason}
        # "Version: 2.6.12-1+deb12u4", "Uptime_sec: 54", "Pid: 5859", …
        fields = {
            key: value
            for key, _, value in (line.partition(": ") for line in answer.splitlines())
            if value
        }
        if "Version" not in fields:
            return {"runtime_api": where, "ok": False, "error": f"show info: {answer[:200]!r}"}
        return {
            "runtime_api": where,
            "ok": True,
            "version": fields["Version"],
            "uptime_seconds": _int(fields.get("Uptime_sec")),
            "pid": _int(fields.get("Pid")),
        }

    def slots(self, traffic: Traffic) -> dict[str, Slot]:
        """Every server of `traffic.backend` by name (`show servers state <backend>`)."""
        command = f"show servers state {traffic.backend}"
        return self._parse_slots(traffic, command, self.api_for(traffic).ask(command))

    @staticmethod
    def _parse_slots(traffic: Traffic, command: str, answer: str) -> dict[str, Slot]:
        lines = answer.splitlines()
        if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("# "):
            raise TrafficError(f"HAProxy refused `{command}`: {_quote(answer)}")
        columns = lines[1][2:].split()
        try:
            at = {name: columns.index(name) for name in _STATE_COLUMNS}
        except ValueError:
            raise TrafficError(
                f"`{command}`: unexpected columns {columns} (HAProxy 2.6's are expected)"
            ) from None
        slots: dict[str, Slot] = {}
        for row in lines[2:]:
            values = row.split()
            if len(values) < len(columns) or values[at["be_name"]] != traffic.backend:
                continue
            try:
                slot = Slot(
                    name=values[at["srv_name"]],
                    address=values[at["srv_addr"]],
                    port=int(values[at["srv_port"]]),
                    op_state=int(values[at["srv_op_state"]]),
                    admin_state=int(values[at["srv_admin_state"]]),
                    weight=int(values[at["srv_uweight"]]),
                )
            except ValueError:
                raise TrafficError(f"`{command}`: cannot read the row {row!r}") from None
            slots[slot.name] = slot
        return slots

    def routes(self, traffic: Traffic) -> dict[int, int]:
        """Port -> weight of each slot that is ready and sends to its own port."""
        return self._routes_of(self.slots(traffic))

    @staticmethod
    def _routes_of(slots: Mapping[str, Slot]) -> dict[int, int]:
        routed = {}
        for slot in slots.values():
            port = port_of(slot.name)
            if port is not None and slot.serves(port):
                routed[port] = slot.weight
        return routed

    # Changing -----------------------------------------------------------------------------

    def route(self, traffic: Traffic, weights: Mapping[int, int]) -> None:
        """Serve `traffic.backend` from exactly these ports (port -> weight 0-100).

        The slots are read first: HAProxy unreachable, the backend or a slot missing, or a
        bad weight raise TrafficError before any change. Then, one line each, every answer
        checked before the next line: (1) the address and weight of slots coming in and the
        raised weights, (2) `state ready` for the slots coming in, (3) the lowered weights,
        (4) `state maint` for every other slot that is ready or draining. A slot that already
        serves its port gets a single `set server … weight`: moving traffic back between two
        running versions is one weight change up, then one down.
        """
        self._check_weights(traffic, weights)
        api = self.api_for(traffic)
        slots = self.slots(traffic)
        missing = [server_name(port) for port in weights if server_name(port) not in slots]
        if missing:
            raise TrafficError(
                f"HAProxy's backend {traffic.backend!r} has no server {', '.join(missing)}: "
                "is its config the one `python -m bot proxy-config` prints?"
            )
        raised: list[str] = []
        coming_in: list[str] = []
        lowered: list[str] = []
        for port, weight in sorted(weights.items()):
            name = server_name(port)
            slot = slots[name]
            target = f"{traffic.backend}/{name}"
            if slot.serves(port):
                if weight > slot.weight:
                    raised.append(f"set server {target} weight {weight}")
                elif weight < slot.weight:
                    lowered.append(f"set server {target} weight {weight}")
                continue
            # Its weight before `ready`, so it never serves with a weight left from before.
            if (slot.address, slot.port) != (SLOT_HOST, port):
                raised.append(f"set server {target} addr {SLOT_HOST} port {port}")
            raised.append(f"set server {target} weight {weight}")
            coming_in.append(f"set server {target} state ready")
        taken_out = [
            f"set server {traffic.backend}/{name} state maint"
            for name, slot in sorted(slots.items())
            if port_of(name) not in weights and not slot.in_maint
        ]
        for line in (raised, coming_in, lowered, taken_out):
            if line:
                self._run(api, line)

    def shift(self, traffic: Traffic, weights: Mapping[int, int]) -> bool:
        """Re-weight slots that already serve their ports: one line, one round trip, no read
        first. The line ends with `show servers state`, so the answer says whether the backend
        is now served by exactly these ports at these weights; False when it is not (HAProxy
        restarted, a slot in maintenance, another slot still serving), with nothing changed
        but these slots' weights: the caller then routes. The highest weight is set first, so
        some server always has weight, as in route().
        """
        self._check_weights(traffic, weights)
        commands = [
            f"set server {traffic.backend}/{server_name(port)} weight {weight}"
            for port, weight in sorted(weights.items(), key=lambda item: -item[1])
        ]
        command = f"show servers state {traffic.backend}"
        answers = self.api_for(traffic).batch([*commands, command])
        if not all(_succeeded(c, a) for c, a in zip(commands, answers, strict=False)):
            return False
        slots = self._parse_slots(traffic, command, answers[-1])
        return self._routes_of(slots) == dict(weights)

    def drain(self, traffic: Traffic, port: int) -> None:
        """`state drain` for the port's slot; a slot in maintenance is left there (HAProxy
        would take it out of maintenance to drain it)."""
        name = server_name(port)
        slot = self.slots(traffic).get(name)
        if slot is None:
            raise TrafficError(f"HAProxy's backend {traffic.backend!r} has no server {name}")
        if not slot.in_maint:
            self._run(self.api_for(traffic), [f"set server {traffic.backend}/{name} state drain"])

    # Helpers ------------------------------------------------------------------------------

    def api_for(self, traffic: Traffic) -> RuntimeApi:
        """The runtime API of the HAProxy that serves `traffic` (a new connection per line)."""
        return RuntimeApi(traffic.runtime_api, self.timeout)

    @staticmethod
    def _check_weights(traffic: Traffic, weights: Mapping[int, int]) -> None:
        outside = sorted(port for port in weights if port not in traffic.ports)
        if outside:
            raise TrafficError(f"ports {outside} are outside traffic.ports {traffic.ports}")
        bad = {port: w for port, w in weights.items() if not 0 <= w <= 100}
        if bad:
            raise TrafficError(f"weights must be 0-100, got {bad}")
        if not any(weights.values()):
            raise TrafficError(
                f"no port would get any of {traffic.backend!r}'s requests (weights {dict(weights)})"
            )

    @staticmethod
    def _run(api: RuntimeApi, commands: list[str]) -> None:
        for command, answer in zip(commands, api.batch(commands), strict=True):
            if not _succeeded(command, answer):
                raise TrafficError(f"HAProxy refused `{command}`: {_quote(answer)}")


_STATE_COLUMNS = (
    "be_name",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_port",
)


def _succeeded(command: str, answer: str) -> bool:
    """`set server … weight|state` answer nothing on success; `addr` says what it changed."""
    if " addr " not in command:
        return answer.strip() == ""
    done = _ADDR_DONE.fullmatch(answer.strip())
    if done is None:
        return False
    wanted_port = command.rsplit(" ", 1)[1]
    return done["port"] in (None, wanted_port)


def _split_answers(raw: str) -> list[str]:
    """One answer per command: HAProxy ends each with an empty line."""
    answers: list[str] = []
    current: list[str] = []
    for line in raw.split("\n")[:-1]:  # the text after the last newline is not a line
        if line:
            current.append(line)
        else:
            answers.append("\n".join(current))
            current = []
    return answers


def _lines(commands: Sequence[str]) -> list[list[str]]:
    """The commands in as few lines as fit HAProxy's buffer, in order."""
    lines: list[list[str]] = []
    size = MAX_LINE
    for command in commands:
        if size + len(command) + 2 > MAX_LINE:
            lines.append([])
            size = 0
        lines[-1].append(command)
        size += len(command) + 2
    return lines


def _first(line: str) -> str:
    return line.split(";", 1)[0] + (" …" if ";" in line else "")


def _quote(answer: str) -> str:
    """HAProxy's answer on one line, for a reason."""
    text = " ".join(answer.split())
    return (text[:300] + (" …" if len(text) > 300 else "")) if text else "(an empty answer)"


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None
