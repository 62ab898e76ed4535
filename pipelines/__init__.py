"""viewcount: views, impressions and unique viewers from Kafka through PyFlink into ClickHouse."""
