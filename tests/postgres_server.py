"""A throwaway PostgreSQL server for the multi-worker search tests (real server, not a mock).

``initdb`` into a temporary directory, ``pg_ctl start`` on a free localhost port with trust
authentication, one database per test session; stopped and deleted at teardown. PostgreSQL
refuses to run as root, so when the tests run as root the server runs as the ``postgres``
user (``runuser``). Where no binaries exist the tests that need it skip, saying why;
``.ci/run`` sets ``QPRUNER_REQUIRE_POSTGRES=1`` so that in CI a missing server fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SEARCH_DIRS = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/14/bin",
    "/usr/local/pgsql/bin",
)


def find_bin() -> Path | None:
    for d in SEARCH_DIRS:
        if (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int
    user_prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/qpruner"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.user_prefix, *args], check=check, capture_output=True, text=True)

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-w",
            "-l",
            str(self.data_dir / "log"),
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False
        )

    def create_db(self, name: str) -> str:
        self._run(
            str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def start_server() -> PostgresServer:
    bin_dir = find_bin()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (initdb) found")
    root = Path(tempfile.mkdtemp(prefix="qpruner-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        root.chmod(0o755)
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(bin_dir, data, _free_port(), prefix)
    server.start()
    deadline = time.time() + 30
    while (
        subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port)], capture_output=True
        ).returncode
        != 0
    ):
        if time.time() > deadline:
            raise TimeoutError("PostgreSQL did not become ready in 30 s")
        time.sleep(0.2)
    server.create_db("qpruner")
    return server


def remove(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)
