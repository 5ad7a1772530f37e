"""agentguard: stops AI agents from burning money."""
