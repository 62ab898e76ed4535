"""Superset's configuration for the local stack (`make superset`, pipelines/serve/superset.py): its metadata
and secret key under the state folder, loopback only, nothing fetched from or sent to the internet."""

import os
from pathlib import Path

# pipelines/serve/superset_server.py sets SUPERSET_HOME to <state>/superset; Superset keeps its SQLite metadata
# database there (superset.db, its default location under SUPERSET_HOME).
_HOME = Path(os.environ["SUPERSET_HOME"])


def _secret(name: str) -> str:
    """A value from secrets.env (mode 0600, generated at the first start; never in the repository)."""
    for line in (_HOME / "secrets.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise KeyError(f"{name} is not in {_HOME / 'secrets.env'}: delete the file and run `make superset` again")


SECRET_KEY = _secret("SUPERSET_SECRET_KEY")
# The pages load nothing from outside this server: Superset's default policy also allows a usage
# pixel (every page draws one; chromium reports it blocked), map tiles and web fonts from other hosts.
TALISMAN_CONFIG = {
    "content_security_policy": {
        "base-uri": ["'self'"],
        "default-src": ["'self'"],
        "img-src": ["'self'", "blob:", "data:"],
        "worker-src": ["'self'", "blob:"],
        "connect-src": ["'self'"],
        "object-src": "'none'",
        "style-src": ["'self'", "'unsafe-inline'"],
        "font-src": ["'self'", "data:"],
        "script-src": ["'self'", "'strict-dynamic'"],
    },
    "content_security_policy_nonce_in": ["script-src"],
    "force_https": False,
    "session_cookie_secure": False,
}


def _truncate_as_every_clickhouse_does() -> None:
    """Superset formats every query with sqlglot before running it, and sqlglot's ClickHouse dialect
    writes toStartOfMinute(t), toStartOfHour(t), toMonday(t)... as dateTrunc('MINUTE', t): a
    function ClickHouse 18.16 does not have ("Unknown function dateTrunc", every chart with a time
    grain). Write them back as the toStartOf* functions every ClickHouse release has. A query
    mutator cannot do it: SQL Lab mutates before formatting, charts after (MUTATE_AFTER_SPLIT)."""
    from sqlglot import exp
    from sqlglot.dialects.clickhouse import ClickHouse

    functions = {"MINUTE": "toStartOfMinute", "HOUR": "toStartOfHour", "DAY": "toStartOfDay", "WEEK": "toMonday",
                 "MONTH": "toStartOfMonth", "QUARTER": "toStartOfQuarter", "YEAR": "toStartOfYear"}
    transforms = ClickHouse.Generator.TRANSFORMS
    current = transforms[exp.TimestampTrunc]

    def truncate(generator, expression: exp.TimestampTrunc) -> str:
        function = functions.get(expression.text("unit").upper())
        if function is None:
            return current(generator, expression)
        return generator.func(function, expression.this, expression.args.get("zone"))

    ClickHouse.Generator.TRANSFORMS = {**transforms, exp.TimestampTrunc: truncate}


_truncate_as_every_clickhouse_does()

# Flask-Compress gzips every response as it is sent: a page of Superset loads about 16 MB of
# JavaScript, and the largest file (7.6 MB) alone took 1.4 s of CPU to gzip here, on every page
# view, for a browser on the same host. Nothing to save on loopback.
COMPRESS_REGISTER = False
