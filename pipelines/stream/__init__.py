"""Where an event is counted as it arrives: the Flink job, its runner, Kafka progress, ClickHouse's
Kafka consumers, the loader and the change feed."""
