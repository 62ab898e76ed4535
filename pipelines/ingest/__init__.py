"""Where an event enters: the HTTP collector, its client, and the rules that accept or reject an event."""
