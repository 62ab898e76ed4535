"""Where the archive corrects the stream: hour rebuilds (backfill) and reconciliation."""
