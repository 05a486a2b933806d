"""The client of the management API, and the command-line commands built on it.

`webhookd.AsyncClient` and `webhookd.Client` (client/core.py, client/sync.py) are the
public, typed client: publish, manage endpoints, read and retry deliveries, with retries of
503/429 answers and one exception type, `WebhookdError`. The commands `webhookd
endpoints|events|deliveries|event-types|trigger …` and `webhookd healthcheck` use it: this
package owns their arguments, the readable tables and key/value views, `--json` output for
scripts, and the rule that every failure is one line on stderr: API and connection errors
exit 1, bad usage exits 2.
"""

from webhookd.client.commands import add_client_commands, add_healthcheck
from webhookd.client.trigger import add_trigger

__all__ = ["add_client_commands", "add_healthcheck", "add_trigger"]
