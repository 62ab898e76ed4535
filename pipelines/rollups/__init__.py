"""What the rows add up to: subjects and attribution, subject rollups, listener sessions,
unique-viewer sketches."""
