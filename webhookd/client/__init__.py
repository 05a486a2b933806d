"""The operator commands that talk to a running daemon over its API.

`webhookd endpoints|events|deliveries|event-types …` and `webhookd healthcheck`: the
package owns their arguments, the HTTP calls (one aiohttp session per command, TCP or a
unix socket), the readable tables and key/value views, `--json` output for scripts, and
the rule that every failure is one line on stderr: API and connection errors exit 1, bad
usage exits 2.
"""

from webhookd.client.commands import add_client_commands, add_healthcheck

__all__ = ["add_client_commands", "add_healthcheck"]
