"""Where rows are kept: the ClickHouse client, migrations and the registry of tables and their columns."""
