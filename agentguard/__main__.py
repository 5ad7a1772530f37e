"""``python -m agentguard``: the ``agentguard`` command."""

from agentguard.cli import main

main()
